# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
from .prerun_checks import (check_data_paths, check_pretrained_files,
                            find_missing_pretrained)

__all__ = [
    'check_data_paths', 'check_pretrained_files', 'find_missing_pretrained'
]
