from setuptools import find_packages, setup


def version():
    scope = {}
    with open('mmrest/version.py') as f:
        exec(f.read(), scope)
    return scope['__version__']


setup(
    name='mmrest',
    version=version(),
    description='ResT (NeurIPS 2021) backbone for OpenMMLab: mmdet and mmseg',
    long_description=open('README.md').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['mmrest', 'mmrest.*']),
    python_requires='>=3.8',
    install_requires=[
        'torch>=1.8',
        'mmengine>=0.10.0,<1.0',
        'mmcv>=2.0.0rc4,<2.2.0',
        'mmdet>=3.0.0,<3.4.0',
    ],
    extras_require={
        'seg': ['mmsegmentation>=1.0.0', 'ftfy', 'regex'],
        'tests': ['pytest', 'pycocotools'],
    },
    license='Apache License 2.0',
    zip_safe=False,
)
