# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
from .prerun_checks import (check_classes, check_data_paths,
                            check_pretrained_files, checkpoint_to_load,
                            coco_summary, find_missing_pretrained,
                            head_class_counts, skip_pretrained_loaded_over)

__all__ = [
    'check_classes', 'check_data_paths', 'check_pretrained_files',
    'checkpoint_to_load', 'coco_summary', 'find_missing_pretrained',
    'head_class_counts', 'skip_pretrained_loaded_over'
]
