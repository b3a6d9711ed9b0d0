# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
from .data_paths import check_data_paths

__all__ = ['check_data_paths']
