# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""Utilities of the library: :mod:`.torch_compat`, the answers that differ
between the torch versions mmrest supports, and :mod:`.inductor_patches`,
fixes of Inductor bugs that ResT's training graphs meet. (The checks of a
config's files before a run are the programs' business:
:mod:`mmrest_tools.prerun_checks`.)
"""
