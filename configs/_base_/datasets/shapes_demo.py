# The embedded shapes set of the demos (`make demo`, `make demo-seg`): the
# arguments of mmrest.synthetic.generate_shapes_coco, which the demos call
# when the config's data_root lacks the set (deterministic: same seed, same
# files; a set made with other arguments is regenerated).
shapes_data = dict(
    splits=dict(train=1000, val=100),
    image_size=(128, 128),
    max_objects=4,
    object_size=(24, 64),
    # Every shape of a class in the same pose (squares axis-aligned). With
    # any rotation (180) the detector needs about twice the steps to tell
    # the classes apart (docs/demo.md, "How the configuration was chosen").
    max_rotation=0,
    seed=0)
