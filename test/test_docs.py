"""Docs as tests: the commands in README.md, the parameter file and the parameter docs must work as written.

Checks (whatever README sections exist; nothing here names a particular command):

a. every command line in README.md's fenced ``bash``/``sh``/``shell``/``console`` blocks (continuation lines
   joined, comments dropped, ``&&``/``;``/``|`` chains split):
   * a console script (``X``, ``.venv/bin/X``, ``$(which X)``, ``ros2 run tscm_ros X``, ``python -m MODULE``)
     must be in setup.py's entry points; its arguments must parse with its own argparse parser (the CLI's
     ``main`` is called with ``parse_args`` intercepted, so nothing runs), and ``--ros-args`` parts must be
     valid ROS arguments (``-p NAME:=VALUE`` a declared, valid node parameter for place_recognition_node,
     ``--params-file`` an existing file, ``-r A:=B`` remaps);
   * any other ``.venv/bin/X`` must be a console script or a known tool (python, pip, pytest, ...);
   * ``ros2 launch tscm_ros FILE a:=b`` needs ``launch/FILE`` and a declared launch argument ``a``;
   * ``bash scripts/X`` and repo paths in arguments (``config/...``, ``launch/...``, ``scripts/...``,
     ``docs/...``, ``models/...``) must exist.
b. every ``config/*.yaml`` block for place_recognition_node: each key is a declared parameter (or rclpy's
   ``use_sim_time``), its YAML type is the declared type and ``validate(name, value)`` accepts it.
c. every example quoted after "e.g." in a parameter's description, its validator's docstring, its comment in
   ``config/place_recognition.yaml`` (``e.g. A | B | C``) or its row in docs/ROS_INTERFACES.md
   (``e.g. `A`, `B```) is accepted by ``validate``; every index spec quoted in README.md
   (`` `hnsw:...` `` etc., ``[...]`` optional parts with and without) parses with ``IndexSpec.parse``.
d. the parameter table in docs/ROS_INTERFACES.md lists every parameter with the declared default.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import re
import shlex
import sys
import threading
from pathlib import Path

import pytest
import yaml

from tscm_ros.placemap import IndexSpec, IndexSpecError
from tscm_ros.ros.parameters import AUTOMATIC_PARAMETERS, PARAMETERS, PARAMETERS_BY_NAME, validate

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
INTERFACES_DOC = REPO / "docs" / "ROS_INTERFACES.md"
MAIN_CONFIG = REPO / "config" / "place_recognition.yaml"
NODE_NAME = "place_recognition_node"
SHELL_LANGUAGES = ("bash", "sh", "shell", "console")
OTHER_VENV_TOOLS = {"python", "python3", "pip", "pip3", "pytest", "ruff", "colcon", "torchrun", "tensorboard"}
REPO_PATH = re.compile(r"^(config|launch|scripts|docs|models)/[^\s*?]+$")
ROS_FLAGS_WITH_VALUE = {"-p", "--param", "-r", "--remap", "--params-file", "--log-level", "-e", "--enclave"}
INDEX_SPEC_TOKEN = re.compile(r"^(pca\d+w?\+)?(flat|hnsw|ivf)(:\S*)?$")


# ----------------------------------------------------------------------------------------- helpers
def console_scripts() -> dict[str, str]:
    """name -> 'module:function' from setup.py's entry_points, read with ast (setup.py is not run)."""
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "console_scripts":
                    entries = [ast.literal_eval(item) for item in value.elts]
                    return dict(entry.replace(" ", "").split("=", 1) for entry in entries)
    raise AssertionError("setup.py declares no console_scripts")


SCRIPTS = console_scripts()


def shell_blocks(markdown: str) -> list[tuple[int, str]]:
    """(first line number, text) of every fenced shell code block."""
    blocks, current, start, language = [], [], 0, None
    for number, line in enumerate(markdown.splitlines(), start=1):
        fence = re.match(r"^\s*```+\s*([\w+-]*)", line)
        if fence and language is None:
            language, start, current = fence.group(1).lower(), number + 1, []
        elif fence:
            if language in SHELL_LANGUAGES:
                blocks.append((start, "\n".join(current)))
            language = None
        elif language is not None:
            current.append(line)
    return blocks


def command_lines(markdown: str) -> list[tuple[int, list[str]]]:
    """(line number, argv) of every simple command in the shell blocks."""
    commands = []
    for start, text in shell_blocks(markdown):
        logical, first = "", start
        for offset, line in enumerate(text.splitlines()):
            if not logical:
                first = start + offset
            line = re.sub(r"^\s*\$\s+", "", line) if not logical else line  # console prompts
            if line.rstrip().endswith("\\"):
                logical += line.rstrip()[:-1] + " "
                continue
            logical += line
            for argv in _split_commands(logical):
                commands.append((first, argv))
            logical = ""
    return commands


def _split_commands(line: str) -> list[list[str]]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars="&|;")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands, current = [], []
    for token in lexer:
        if token and set(token) <= set("&|;"):
            if current:
                commands.append(current)
            current = []
        else:
            current.append(token)
    if current:
        commands.append(current)
    return [_unwrap(c) for c in commands if c]


def _unwrap(argv: list[str]) -> list[str]:
    """Drop VAR=value prefixes and wrappers (sudo, env, time, torchrun ... $(which X))."""
    while argv and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", argv[0]):
        argv = argv[1:]
    while argv and argv[0] in ("sudo", "env", "time", "exec", "nice"):
        argv = argv[1:]
    for index, token in enumerate(argv):
        match = re.match(r"^\$\(which\s*$", token)
        if match and index + 1 < len(argv) and argv[index + 1].endswith(")"):
            return [argv[index + 1][:-1], *argv[index + 2 :]]
    return argv


class _Parsed(Exception):
    def __init__(self, namespace: argparse.Namespace, extra: list[str]) -> None:
        super().__init__("parsed")
        self.namespace, self.extra = namespace, extra


def parse_with_cli(script: str, args: list[str], monkeypatch) -> argparse.Namespace | None:
    """Run ``script``'s main with ``args`` until its argparse parser has parsed them (then stop it).

    Returns the namespace, None when the CLI has no argparse parser; fails on an argparse error."""
    module_name, function = SCRIPTS[script].split(":")
    module = importlib.import_module(module_name)
    if "argparse" not in Path(module.__file__).read_text():
        assert not args, f"{script} takes no arguments besides --ros-args, got {args}"
        return None
    parse_args, parse_known_args = (
        argparse.ArgumentParser.parse_args,
        argparse.ArgumentParser.parse_known_args,
    )
    inside = threading.local()

    def fake_parse_args(self, argv=None, namespace=None):
        inside.flag = True
        try:
            result = parse_args(self, argv, namespace)
        finally:
            inside.flag = False
        raise _Parsed(result, [])

    def fake_parse_known_args(self, argv=None, namespace=None):
        result = parse_known_args(self, argv, namespace)
        if getattr(inside, "flag", False):
            return result
        raise _Parsed(*result)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", fake_parse_args)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", fake_parse_known_args)
    monkeypatch.setattr(sys, "argv", [script, *args])
    try:
        getattr(module, function)()
    except _Parsed as parsed:
        return parsed.namespace
    except SystemExit as exit_:
        if exit_.code in (0, None) and ({"-h", "--help", "--version"} & set(args)):
            return None  # help / version output is a valid use
        pytest.fail(f"{script} {shlex.join(args)}: the CLI rejects these arguments (exit {exit_.code})")
    pytest.fail(f"{script}: main() returned without parsing its arguments")


def check_ros_arguments(script: str, args: list[str]) -> None:
    """Validate the part after ``--ros-args`` (up to ``--``) the way rcl would, plus our parameter table."""
    tokens = iter(args)
    for token in tokens:
        if token == "--":
            break
        if token == "--ros-args":
            continue
        assert token in ROS_FLAGS_WITH_VALUE, f"{script}: unknown ROS argument {token!r}"
        value = next(tokens, None)
        assert value is not None, f"{script}: {token} needs a value"
        if token in ("-p", "--param", "-r", "--remap"):
            name, sep, text = value.partition(":=")
            assert sep and name and text, f"{script}: {token} {value!r} must look like NAME:=VALUE"
            if token in ("-p", "--param") and script == NODE_NAME:
                names = [spec.name for spec in PARAMETERS] + list(AUTOMATIC_PARAMETERS)
                assert name in names, f"{script}: -p {name}: not a parameter of the node"
                parsed = yaml.safe_load(text)
                assert validate(name, parsed) is None, validate(name, parsed)
                if name in PARAMETERS_BY_NAME:
                    default = PARAMETERS_BY_NAME[name].default
                    assert isinstance(parsed, type(default)), f"-p {name}:={text}: not a {type(default)}"
        elif token == "--params-file":
            assert (REPO / value).is_file(), f"{script}: --params-file {value} does not exist"


def declared_launch_arguments(launch_file: Path) -> set[str]:
    tree = ast.parse(launch_file.read_text())
    return {
        ast.literal_eval(node.args[0])
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "DeclareLaunchArgument"
    }


def check_command(argv: list[str], monkeypatch) -> str | None:
    """Check one README command; returns the console script it ran (None for other programs)."""
    program, args = argv[0], argv[1:]
    name = Path(program).name
    for arg in args:
        if REPO_PATH.match(arg):
            assert (REPO / arg).exists(), f"{shlex.join(argv)}: {arg} does not exist in the repository"
    if name in ("python", "python3") and args[:1] == ["-m"] and len(args) > 1:
        module, args = args[1], args[2:]
        if not module.startswith("tscm_ros"):
            return None
        scripts = [s for s, target in SCRIPTS.items() if target.split(":")[0] == module]
        if not scripts:
            importlib.import_module(module)
            return None
        name = scripts[0]
    elif name == "ros2" and args[:2] == ["run", "tscm_ros"]:
        name, args = args[2], args[3:]
        assert name in SCRIPTS, f"ros2 run tscm_ros {name}: not a console script in setup.py"
    elif name == "ros2" and args[:2] == ["launch", "tscm_ros"]:
        launch_file = REPO / "launch" / args[2]
        assert launch_file.is_file(), f"{launch_file} is missing"
        declared = declared_launch_arguments(launch_file)
        for arg in args[3:]:
            key, sep, _ = arg.partition(":=")
            assert sep and key in declared, f"ros2 launch ... {arg}: {key} is not a declared launch argument"
        return None
    elif name == "bash" and args and args[0].startswith("scripts/"):
        return None  # existence checked above
    elif name not in SCRIPTS:
        if "/.venv/bin/" in f"/{program}" or program.startswith(".venv/bin/"):
            assert name in OTHER_VENV_TOOLS, f"{program}: not a console script of this package (setup.py)"
        return None
    ros_at = args.index("--ros-args") if "--ros-args" in args else len(args)
    parse_with_cli(name, args[:ros_at], monkeypatch)
    check_ros_arguments(name, args[ros_at:])
    return name


# ----------------------------------------------------------------------------------------- (a) README
README_COMMANDS = command_lines(README.read_text())


def test_readme_has_commands_and_the_parser_finds_them():
    assert README_COMMANDS, "README.md has no fenced bash commands"
    sample = (
        "```bash\nA=1 .venv/bin/x --a 'b c' \\\n  --d # note\ny && z | w; torchrun -n 2 $(which q) r\n```"
    )
    assert [argv for _, argv in command_lines(sample)] == [
        [".venv/bin/x", "--a", "b c", "--d"],
        ["y"],
        ["z"],
        ["w"],
        ["q", "r"],
    ]


@pytest.mark.parametrize(
    "argv", [argv for _, argv in README_COMMANDS], ids=[f"README:{line}" for line, _ in README_COMMANDS]
)
def test_readme_command_works_as_written(argv, monkeypatch):
    check_command(argv, monkeypatch)


def test_checker_catches_wrong_commands(monkeypatch):
    """The README checks above would fail on these (guards against a checker that accepts anything)."""
    wrong = [
        [".venv/bin/tscm_evaluate", "--dataset", "corridor:x", "--no-such-flag", "--out", "o"],
        [".venv/bin/tscm_evaluate", "--out", "o"],  # --dataset is required
        [".venv/bin/tscm_nonexistent", "--help"],
        ["tscm_train", "teacher", "--config", "config/does_not_exist.yaml"],
        ["place_recognition_node", "--ros-args", "-p", "index_spec:=hnsw32"],
        ["place_recognition_node", "--ros-args", "-p", "no_such_parameter:=1"],
        ["ros2", "launch", "tscm_ros", "place_recognition.launch.py", "no_such_argument:=1"],
    ]
    for argv in wrong:
        with pytest.raises((AssertionError, pytest.fail.Exception)):
            check_command(argv, monkeypatch)
        monkeypatch.undo()
    assert check_command(["tscm_evaluate", "--dataset", "x:y", "--untrained", "--out", "o"], monkeypatch)
    monkeypatch.undo()
    assert check_command([".venv/bin/tscm_demo", "--help"], monkeypatch) == "tscm_demo"


# ----------------------------------------------------------------------------------------- (b) YAML
def node_sections(document: dict) -> list[dict]:
    return [
        value["ros__parameters"]
        for key, value in (document or {}).items()
        if key.rstrip("/").split("/")[-1] in (NODE_NAME, "**")
        and isinstance(value, dict)
        and "ros__parameters" in value
    ]


@pytest.mark.parametrize("config_file", sorted((REPO / "config").glob("*.yaml")), ids=lambda p: p.name)
def test_config_parameters_are_declared_and_valid(config_file: Path):
    sections = node_sections(yaml.safe_load(config_file.read_text()))
    if config_file == MAIN_CONFIG:
        assert len(sections) == 1
    for section in sections:
        for name, value in section.items():
            assert name in PARAMETERS_BY_NAME or name in AUTOMATIC_PARAMETERS, f"{config_file.name}: {name}?"
            if name in PARAMETERS_BY_NAME:
                default = PARAMETERS_BY_NAME[name].default
                assert type(value) is type(default), f"{name}: {type(value).__name__} in {config_file.name}"
            assert validate(name, value) is None, validate(name, value)


# ----------------------------------------------------------------------------------------- (c) examples
def _eg_examples(text: str) -> list[str]:
    """Values after 'e.g.' up to ';', '(' or ')', separated by ' | '."""
    examples = []
    for match in re.finditer(r"e\.g\.\s+([^;()]+)", text):
        examples += [part.strip() for part in match.group(1).split(" | ") if part.strip()]
    return examples


def _grouped_alternatives(text: str) -> list[str]:
    """Values in a parenthesised 'A | B | C ...' list (the older comment style), e.g. '(flat | hnsw:M=32)'."""
    examples = []
    for group in re.findall(r"\(([^()]*\|[^()]*)\)", text):
        for part in re.sub(r"^\s*e\.g\.", "", group).split(";")[0].split(" | "):
            words = part.replace("...", " ").split()
            if words:
                examples.append(words[0])
    return examples


def yaml_comments(path: Path) -> dict[str, str]:
    """Parameter name -> its comment in the parameter file (with continuation comment lines)."""
    comments, current = {}, None
    for line in path.read_text().splitlines():
        match = re.match(r"^\s+(\w+):[^#]*#\s?(.*)$", line)
        if match:
            current = match.group(1)
            comments[current] = match.group(2)
        elif current and re.match(r"^\s+#\s", line) and line.index("#") > 10:
            comments[current] += " " + line.split("#", 1)[1].strip()
        else:
            current = None
    return comments


def doc_table_rows() -> dict[str, list[str]]:
    rows = {}
    for line in INTERFACES_DOC.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 5 and re.fullmatch(r"`\w+`", cells[0]):
            rows[cells[0].strip("`")] = cells
    return rows


def parameter_examples() -> list[tuple[str, str, str]]:
    """(parameter, example, where) of every documented example value."""
    found = []
    comments = yaml_comments(MAIN_CONFIG)
    rows = doc_table_rows()
    for spec in PARAMETERS:
        sources = {
            "description": spec.description,
            "validator": (spec.validator.__doc__ or "") if spec.validator else "",
            "config": comments.get(spec.name, ""),
        }
        for where, text in sources.items():
            examples = _eg_examples(text)
            if isinstance(spec.default, str):
                examples += _grouped_alternatives(text)
            found += [(spec.name, example, where) for example in examples]
        meaning = rows.get(spec.name, [""] * 5)[4]
        for match in re.finditer(r"e\.g\.\s+((?:`[^`]+`[,\s]*(?:or\s+)?)+)", meaning):
            found += [(spec.name, ex, "ROS_INTERFACES.md") for ex in re.findall(r"`([^`]+)`", match.group(1))]
    return found


def test_config_comments_list_only_valid_choices():
    """'a | b' alternatives in the parameter file's comments of choice parameters are valid choices."""
    comments = yaml_comments(MAIN_CONFIG)
    for spec in PARAMETERS:
        comment = comments.get(spec.name, "").replace("[read-only]", "").strip()
        if not spec.choices or " | " not in comment:
            continue
        alternatives = {
            segment.split()[0].rstrip(":,") for segment in comment.split(" | ") if segment.split()
        }
        assert alternatives <= set(spec.choices), (
            f"{spec.name}: comment lists {alternatives - set(spec.choices)}"
        )


def test_documented_examples_exist():
    names = {name for name, _, _ in parameter_examples()}
    assert "index_spec" in names, "the index_spec examples were not found (extraction broken?)"


@pytest.mark.parametrize("name, example, where", parameter_examples(), ids=lambda v: str(v))
def test_documented_example_values_are_valid(name: str, example: str, where: str):
    value = yaml.safe_load(example) if not isinstance(PARAMETERS_BY_NAME[name].default, str) else example
    assert validate(name, value) is None, f"{where}: {name} example {example!r}: {validate(name, value)}"


def readme_index_specs() -> list[str]:
    specs = []
    for token in re.findall(r"`([^`\s]+)`", README.read_text()):
        if INDEX_SPEC_TOKEN.match(re.sub(r"\[[^\]]*\]", "", token)):
            specs += {re.sub(r"\[[^\]]*\]", "", token), re.sub(r"[\[\]]", "", token)}
    return specs


@pytest.mark.parametrize("spec", readme_index_specs())
def test_readme_index_specs_parse(spec: str):
    with contextlib.suppress(IndexSpecError):
        IndexSpec.parse(spec)
        return
    pytest.fail(f"README.md index spec {spec!r} does not parse: {_parse_error(spec)}")


def _parse_error(spec: str) -> str:
    try:
        IndexSpec.parse(spec)
    except IndexSpecError as error:
        return str(error)
    return ""


def test_wrong_examples_would_be_caught():
    assert _eg_examples("index (e.g. flat | hnsw32 | ivf:nlist=8,nprobe=2; see x)") == [
        "flat",
        "hnsw32",
        "ivf:nlist=8,nprobe=2",
    ]
    assert _grouped_alternatives("index (flat | hnsw32 | ivf1024,flat ...; see x)") == [
        "flat",
        "hnsw32",
        "ivf1024,flat",
    ]
    assert validate("index_spec", "hnsw32") is not None and validate("index_spec", "ivf1024,flat") is not None


# ----------------------------------------------------------------------------------------- (d) docs table
def test_interfaces_doc_defaults_match_the_parameter_table():
    rows = doc_table_rows()
    for spec in PARAMETERS:
        assert spec.name in rows, f"docs/ROS_INTERFACES.md lacks {spec.name}"
        documented = yaml.safe_load(rows[spec.name][2].strip("`"))
        expected = spec.default
        if isinstance(expected, float) and isinstance(documented, int):
            documented = float(documented)
        assert documented == expected, (
            f"{spec.name}: docs say {rows[spec.name][2]}, the node uses {expected!r}"
        )
