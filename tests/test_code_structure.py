"""The shape of the code, read from its source (nothing is imported):

- the packages ``mmrest`` and ``mmrest_tools`` have no import cycle, counting
  the imports inside functions as well as those at the top of a module (a
  function-level import hides a cycle from Python, not from a reader);
- no function in them is longer than :data:`MAX_FUNCTION_LINES` lines of
  code (blank lines, comment lines and the docstring not counted);
- every public class whose ``__init__`` takes arguments documents each of
  them, and only those, under ``Args:`` in its docstring.

``docs/code_map.md`` states the rules for contributors.
"""
import ast
import io
import re
import tokenize
from pathlib import Path
from typing import Dict, List, Optional, Set

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ('mmrest', 'mmrest_tools')
MAX_FUNCTION_LINES = 60


def module_files(root: Path = ROOT) -> Dict[str, Path]:
    """``{'mmrest.checkpoint.files': path, ...}`` for every module of
    :data:`PACKAGES` (a package under its own name, from __init__.py)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob('*.py')):
            parts = list(path.relative_to(root).with_suffix('').parts)
            if parts[-1] == '__init__':
                parts.pop()
            found['.'.join(parts)] = path
    return found


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute name a ``from ... import`` statement starts from."""
    if not node.level:
        return node.module or ''
    parts = module.split('.')
    if not is_package:
        parts = parts[:-1]
    parts = parts[:len(parts) - (node.level - 1)]
    if node.module:
        parts.append(node.module)
    return '.'.join(parts)


def _nearest_module(name: str, modules: Set[str]) -> Optional[str]:
    """``name`` or the closest enclosing package of ours (``a.b.f`` with
    ``f`` a function of module ``a.b`` gives ``a.b``)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition('.')[0]
    return None


def import_graph(files: Dict[str, Path]) -> Dict[str, Set[str]]:
    """Module -> the modules of ours it imports, anywhere in its source
    (top level, inside functions, classes, ``if`` and ``try`` blocks).

    ``from .pkg import name`` counts as importing ``pkg.name`` when that is
    a module and ``pkg`` otherwise; ``import a.b.c`` as importing ``a.b.c``.
    Importing a submodule does not count as importing its package (Python
    runs the package's ``__init__`` first, but that is no dependency a
    reader follows, and would make every package a cycle).
    """
    modules = set(files)
    graph = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        is_package = path.name == '__init__.py'
        edges = set()
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, is_package, node)
                targets = [f'{base}.{alias.name}' for alias in node.names]
            for target in targets:
                found = _nearest_module(target, modules)
                if found is not None and found != module:
                    edges.add(found)
        graph[module] = edges
    return graph


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None."""
    state = {}  # 1: on the current path, 2: done
    path = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def _comment_or_blank_lines(source: str) -> Set[int]:
    """Line numbers holding nothing but a comment or whitespace."""
    code_lines = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE,
                          tokenize.INDENT, tokenize.DEDENT,
                          tokenize.ENDMARKER):
            continue
        code_lines.update(range(token.start[0], token.end[0] + 1))
    total = source.count('\n') + 1
    return set(range(1, total + 1)) - code_lines


def function_lengths(path: Path) -> Dict[str, int]:
    """``{'Class.method': lines of code, ...}`` for every function of a file
    (nested ones too, under ``outer.<locals>.inner``): the lines from
    ``def`` to its end, less blank and comment lines and its docstring."""
    source = path.read_text()
    tree = ast.parse(source, str(path))
    not_code = _comment_or_blank_lines(source)
    lengths = {}

    def walk(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = prefix + child.name
                lines = set(range(child.lineno, child.end_lineno + 1))
                body = child.body
                if body and isinstance(body[0], ast.Expr) and isinstance(
                        body[0].value, ast.Constant) and isinstance(
                            body[0].value.value, str):
                    lines -= set(range(body[0].lineno, body[0].end_lineno + 1))
                lengths[name] = len(lines - not_code)
                walk(child, name + '.<locals>.')
            elif isinstance(child, ast.ClassDef):
                walk(child, prefix + child.name + '.')
            else:
                walk(child, prefix)

    walk(tree, '')
    return lengths


# ------------------------------------------------------------ the checks
_SECTION = re.compile(r'^\S.*:$', re.M)  # "Returns:", "Note:", ...
_DOCUMENTED = re.compile(r'^    (\w+)(?: \(|:)', re.M)


def argument_doc_problems(path: Path) -> List[str]:
    """The public classes of the module at ``path`` whose ``__init__``
    takes arguments (``*args`` and ``**kwargs`` aside) and whose docstring
    lacks an ``Args:`` section, leaves one out or names one it does not
    take, as ``'Class: what'`` lines."""
    problems = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ClassDef) or node.name.startswith('_'):
            continue
        init = next(
            (f for f in node.body
             if isinstance(f, ast.FunctionDef) and f.name == '__init__'), None)
        if init is None:
            continue
        a = init.args
        taken = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs][1:]
        if not taken:
            continue
        doc = ast.get_docstring(node) or ''
        if 'Args:' not in doc:
            problems.append(f'{node.name}: no Args section for {taken}')
            continue
        section = _SECTION.split(doc.split('Args:', 1)[1].lstrip('\n'))[0]
        named = _DOCUMENTED.findall(section)
        missing = [t for t in taken if t not in named]
        extra = [n for n in named if n not in taken]
        if missing or extra:
            problems.append(f'{node.name}: Args lacks {missing}, names '
                            f'{extra} it does not take')
    return problems


# (the helpers above are checked first, on small sources whose answers are
# known, so that no rule can pass because a helper sees nothing)


def _write(root: Path, files: Dict[str, str]) -> Dict[str, Path]:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return module_files(root)


def test_import_graph_sees_function_level_and_relative_imports(tmp_path):
    """The situation of mmrest/checkpoint before it was split: ``family``
    imports ``loading`` at the top, ``loading`` imports ``family`` inside a
    function. That is a cycle; a graph of top-level imports misses it."""
    files = _write(
        tmp_path, {
            'mmrest/__init__.py':
            '',
            'mmrest/checkpoint/__init__.py':
            'from .family import f\n',
            'mmrest/checkpoint/family.py':
            'from .loading import load\n\ndef f():\n    return load\n',
            'mmrest/checkpoint/loading.py':
            'import os\n\ndef load():\n'
            '    from .family import f\n    return f\n',
            'mmrest_tools/__init__.py':
            '',
            'mmrest_tools/demo.py':
            'import mmrest.checkpoint.family\n'
            'from mmrest import checkpoint\n',
        })
    graph = import_graph(files)
    assert graph['mmrest.checkpoint'] == {'mmrest.checkpoint.family'}
    assert graph['mmrest.checkpoint.loading'] == {'mmrest.checkpoint.family'}
    assert graph['mmrest_tools.demo'] == {
        'mmrest.checkpoint.family', 'mmrest.checkpoint'
    }
    cycle = find_cycle(graph)
    assert cycle is not None and set(cycle) == {
        'mmrest.checkpoint.family', 'mmrest.checkpoint.loading'
    }
    graph['mmrest.checkpoint.loading'] = set()
    assert find_cycle(graph) is None


def test_function_lengths_count_code_only(tmp_path):
    path = tmp_path / 'm.py'
    path.write_text('def f(a,\n'  # 1: code
                    '      b):\n'  # 2: code
                    '    """Doc.\n'  # docstring
                    '\n'
                    '    More."""\n'
                    '    # a comment\n'
                    '\n'
                    '    x = (a +\n'  # 3: code
                    '         b)  # c\n'  # 4: code
                    '    s = """two\n'  # 5: a string that is not the docstring
                    'lines"""\n'  # 6
                    '    return x, s\n'  # 7
                    '\n'
                    'class C:\n'
                    '    def g(self):\n'  # 1
                    '        def h():\n'  # 2 (and 1 of h)
                    '            pass\n'  # 3 (and 2 of h)
                    '        return h\n'  # 4
                    )
    assert function_lengths(path) == {'f': 7, 'C.g': 4, 'C.g.<locals>.h': 2}


def test_no_import_cycle():
    """No module of mmrest or mmrest_tools imports, directly or through
    others, a module that imports it back (see docs/code_map.md)."""
    graph = import_graph(module_files())
    assert 'mmrest.checkpoint' in graph and graph['mmrest.checkpoint']
    cycle = find_cycle(graph)
    assert cycle is None, 'import cycle: ' + ' -> '.join(cycle)


def test_library_never_imports_the_programs():
    """The layers: tools/ -> mmrest_tools/ -> mmrest/, never back."""
    graph = import_graph(module_files())
    back = sorted(f'{module} -> {target}' for module, targets in graph.items()
                  if module.split('.')[0] == 'mmrest' for target in targets
                  if target.startswith('mmrest_tools'))
    assert not back, back


def test_no_long_functions():
    """No function of mmrest or mmrest_tools has more than 60 lines of
    code: a longer one is split into named steps."""
    long = []
    files = module_files()
    assert len(files) > 20
    for module, path in files.items():
        for name, lines in function_lengths(path).items():
            if lines > MAX_FUNCTION_LINES:
                long.append(f'{path.relative_to(ROOT)}: {name} ({lines})')
    assert not long, 'functions over {} lines of code:\n  {}'.format(
        MAX_FUNCTION_LINES, '\n  '.join(long))


def test_argument_doc_problems_are_found(tmp_path):
    path = tmp_path / 'm.py'
    path.write_text('class Good:\n'
                    '    """A class.\n\n'
                    '    Args:\n'
                    '        a (int): The first.\n'
                    '            More of it.\n'
                    '        b: The second.\n\n'
                    '    Returns:\n'
                    '        c (int): Not an argument.\n'
                    '    """\n\n'
                    '    def __init__(self, a, *args, b=1, **kwargs):\n'
                    '        pass\n\n'
                    'class Lacks:\n'
                    '    """Lacks one.\n\n'
                    '    Args:\n'
                    '        a (int): The first.\n'
                    '        z (int): Gone.\n'
                    '    """\n\n'
                    '    def __init__(self, a, b):\n'
                    '        pass\n\n'
                    'class Bare:\n'
                    '    def __init__(self, a):\n'
                    '        pass\n\n'
                    'class _Private:\n'
                    '    def __init__(self, a):\n'
                    '        pass\n\n'
                    'class NoArguments:\n'
                    '    def __init__(self, *args, **kwargs):\n'
                    '        pass\n')
    assert argument_doc_problems(path) == [
        "Lacks: Args lacks ['b'], names ['z'] it does not take",
        "Bare: no Args section for ['a']",
    ]


def test_public_classes_document_their_arguments():
    """Every public class of mmrest and mmrest_tools documents each
    argument of its ``__init__``, and only those, under ``Args:`` (the
    house style of OpenMMLab's backbones)."""
    problems = []
    for path in module_files().values():
        problems += [
            f'{path.relative_to(ROOT)}: {p}'
            for p in argument_doc_problems(path)
        ]
    assert not problems, '\n  '.join(['classes:', *problems])
