# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
from .prerun_checks import (check_data_paths, check_pretrained_files,
                            checkpoint_to_load, find_missing_pretrained,
                            skip_pretrained_loaded_over)

__all__ = [
    'check_data_paths', 'check_pretrained_files', 'checkpoint_to_load',
    'find_missing_pretrained', 'skip_pretrained_loaded_over'
]
