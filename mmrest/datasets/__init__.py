from .shapes import CLASSES as SHAPES_CLASSES
from .shapes import generate_shapes_coco

__all__ = ['generate_shapes_coco', 'SHAPES_CLASSES']
