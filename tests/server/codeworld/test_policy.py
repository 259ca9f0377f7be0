"""Strict mode's deny-list (`_policy.check_policy`), construct by construct.

The denied names are written out here rather than read from the module, so that dropping
one from the module's lists fails a test (the mutation pass cannot mutate module-level
tables; these tests pin them). Each refusal names the construct and its line."""

from __future__ import annotations

import pytest

from scillm.server.codeworld.errors import InvalidSource, PolicyViolation
from scillm.server.codeworld.sandbox._policy import check_policy

MODULES = ["os", "subprocess", "socket", "ctypes", "sys", "shutil", "multiprocessing", "pty",
           "signal", "threading", "importlib", "builtins", "posix", "_posixsubprocess",
           "mmap", "resource", "fcntl", "asyncio", "http", "urllib", "ftplib", "telnetlib",
           "pathlib"]
CALLS = ["eval", "exec", "compile", "__import__", "globals", "breakpoint", "vars", "getattr",
         "setattr", "delattr", "input"]
ATTRIBUTES = ["__subclasses__", "__globals__", "__builtins__", "__code__", "__closure__",
              "__bases__", "__mro__", "__dict__", "__getattribute__", "f_globals", "f_locals",
              "gi_frame"]


def _refusal(source: str) -> str:
    with pytest.raises(PolicyViolation) as info:
        check_policy(source, strategy="s")
    assert info.value.strategy == "s"
    message = str(info.value)
    assert message.startswith("strategy 's': "), message
    return message.removeprefix("strategy 's': ")


@pytest.mark.parametrize("module", MODULES)
def test_denied_modules_in_every_import_form(module: str) -> None:
    assert _refusal(f"x = 1\nimport {module}\n") == f"line 2: import of {module} is denied"
    assert _refusal(f"import math, {module}.inner as m\n") == \
        f"line 1: import of {module}.inner is denied"
    assert _refusal(f"from {module} import thing\n") == \
        f"line 1: import from {module} is denied"
    assert _refusal(f"from {module}.sub import thing\n") == \
        f"line 1: import from {module}.sub is denied"


@pytest.mark.parametrize("name", CALLS)
def test_denied_builtins_called_or_only_named(name: str) -> None:
    assert _refusal(f"\n\n{name}('1')\n") == f"line 3: {name} is denied"
    assert _refusal(f"f = {name}\n") == f"line 1: {name} is denied"


@pytest.mark.parametrize("attribute", ATTRIBUTES)
def test_denied_attributes(attribute: str) -> None:
    assert _refusal(f"y = ().{attribute}\n") == f"line 1: attribute {attribute} is denied"


@pytest.mark.parametrize("source", [
    "open('f', 'w')", "open('f', 'a')", "open('f', 'x')", "open('f', 'r+')",
    "open('f', 'wb')", "open('f', mode='w')", "open('f', 'r', mode='w')",
    "open('f', m)", "open('f', mode=m)", "open('f', 1)",
])
def test_open_for_writing_or_with_an_unknown_mode(source: str) -> None:
    assert _refusal(f"m = 'w'\n{source}\n") == "line 2: open() for writing is denied"


@pytest.mark.parametrize("source", [
    "import math\nprint(math.pi)\n",
    "from collections import Counter\nimport json.decoder\n",
    "from . import sibling\n",  # a relative import names no module
    "import ossify\nimport system\nimport osx.path\n",  # prefixes of denied names are fine
    "open('f')\nopen('f', 'r')\nopen('f', mode='rb')\nopen('f', 'rt', mode='r')\n",
    "x.open('f', 'w')\n",  # a method named open, not the builtin
    "def solve(task, context):\n    return sorted(context['input'])\n",
    "y = obj.__class__\nz = obj.__name__\nw = obj.globals_\n",
    "evaluate = 1\nexecute = evaluate\n",
])
def test_allowed_sources(source: str) -> None:
    check_policy(source)


def test_the_first_denied_construct_is_named() -> None:
    assert _refusal("import math\nimport sys\nimport os\n") == "line 2: import of sys is denied"


def test_a_source_that_does_not_parse() -> None:
    with pytest.raises(InvalidSource, match="syntax error") as info:
        check_policy("def (:\n", strategy="broken")
    assert info.value.strategy == "broken"
    assert not isinstance(info.value, PolicyViolation)
