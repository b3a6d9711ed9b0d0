from .shapes import CLASSES as SHAPES_CLASSES
from .shapes import generate_shapes_coco, shapes_info

__all__ = ['generate_shapes_coco', 'shapes_info', 'SHAPES_CLASSES']
