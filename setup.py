import os
import os.path as osp
import shutil
import sys
from setuptools import find_packages, setup

# What OpenMMLab's `mim` reads from an installed package: <package>/.mim/
# holds the model index, the configs and the tools (`mim search mmrest`,
# `mim train mmrest CONFIG`). They live at the repository root; a wheel or
# an sdist gets copies (made here, ignored by git).
MIM_FILES = ('model-index.yml', 'configs', 'tools')


def add_mim_extension():
    """Copy MIM_FILES into mmrest/.mim when a distribution is built."""
    building = {'bdist_wheel', 'sdist', 'build', 'build_py', 'install'}
    if not building & set(sys.argv[1:]):
        return
    root = osp.dirname(osp.abspath(__file__))
    if not osp.isfile(osp.join(root, 'model-index.yml')):
        return  # not a source tree with the files: keep mmrest/.mim as it is
    target_root = osp.join(root, 'mmrest', '.mim')
    os.makedirs(target_root, exist_ok=True)
    for name in MIM_FILES:
        source, target = osp.join(root, name), osp.join(target_root, name)
        if osp.isdir(target) and not osp.islink(target):
            shutil.rmtree(target)
        elif osp.lexists(target):
            os.remove(target)
        if osp.isdir(source):
            shutil.copytree(
                source,
                target,
                ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
        else:
            shutil.copyfile(source, target)


def version():
    scope = {}
    with open('mmrest/version.py') as f:
        exec(f.read(), scope)
    return scope['__version__']


add_mim_extension()
setup(
    name='mmrest',
    version=version(),
    description='ResT (NeurIPS 2021) backbone for OpenMMLab: mmdet and mmseg',
    long_description=open('README.md').read(),
    long_description_content_type='text/markdown',
    # mmrest is the library; mmrest_tools the programs of tools/*.py,
    # shipped too: `mim train mmrest` runs the copies in mmrest/.mim/tools.
    packages=find_packages(
        include=['mmrest', 'mmrest.*', 'mmrest_tools', 'mmrest_tools.*']),
    package_data={
        'mmrest': [
            '.mim/model-index.yml', '.mim/configs/**/*.py',
            '.mim/configs/**/*.yml', '.mim/tools/**/*.py', '.mim/tools/**/*.sh'
        ]
    },
    # Floors are what the code needs, ceilings the releases it was written
    # against (tested: torch 2.13.0, mmengine 0.10.7, mmcv 2.1.0, mmdet
    # 3.3.0, mmsegmentation 1.2.2, pinned by requirements/constraints.txt;
    # and the oldest stack, torch 2.1.2 with the same OpenMMLab releases,
    # pinned by requirements/constraints-oldest.txt: docs/testing.md).
    python_requires='>=3.9',
    install_requires=[
        # 2.1: SDPA's scale=, torch.load(mmap=), and the torch that
        # OpenMMLab's mmcv 2.1.0 CUDA wheels are built for. Newer APIs are
        # used where torch has them, with the same behaviour provided
        # otherwise (mmrest/utils/torch_compat.py); safe loading uses torch's
        # weights-only loader with a scoped allow-list on torch >= 2.6 and
        # mmrest's restricted unpickler before
        # (mmrest/checkpoint/safe_load.py).
        'torch>=2.1',
        # AtomicCheckpointHook overrides CheckpointHook's private
        # _save_checkpoint_with_step, the same from 0.10.0 to 0.10.7.
        'mmengine>=0.10.0,<0.11',
        'mmcv>=2.0.0rc4,<2.2.0',
        'mmdet>=3.0.0,<3.4.0',
    ],
    extras_require={
        'seg': ['mmsegmentation>=1.0.0,<1.3', 'ftfy', 'regex'],
        'tests': ['pytest', 'pycocotools'],
    },
    license='Apache License 2.0',
    zip_safe=False,
)
