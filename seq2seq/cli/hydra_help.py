"""`--help` of the Hydra apps (`seq2seq-train`, `seq2seq-prepare`), read straight from conf/.

Hydra's own `--help` composes the whole config and then re-composes it once per config group to
list the options: about a second on a small CPU, several times the cost of importing Hydra. A bare
`--help` (or `-h`) is answered here instead, from the files themselves: the defaults list of
train.yaml (each group's default and its comment) and the options found in each group's folder.
`--help` together with any other argument (overrides, `--config-dir`, ...) still goes to Hydra,
which then shows the composed config those arguments give.
"""

from __future__ import annotations

import re
from pathlib import Path

# One entry of train.yaml's defaults list: `  - group: option  # comment`.
_DEFAULT = re.compile(r"^\s*-\s*(?P<group>[\w/]+)\s*:\s*(?P<option>[\w/.-]+)\s*(?:#\s*(?P<comment>.*))?$")


def _defaults(primary: Path) -> dict[str, tuple[str, str]]:
    """group -> (default option, comment), in the order of the defaults list."""
    found: dict[str, tuple[str, str]] = {}
    in_defaults = False
    for line in primary.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line[0].isspace():
            in_defaults = line.startswith("defaults:")
            continue
        match = _DEFAULT.match(line) if in_defaults else None
        if match:
            found[match["group"]] = (match["option"], (match["comment"] or "").strip())
    return found


def _options(conf_dir: Path) -> dict[str, list[str]]:
    """group (folder relative to conf_dir) -> its options (YAML file stems), sorted."""
    groups: dict[str, list[str]] = {}
    for path in sorted(conf_dir.rglob("*.yaml")):
        if path.parent != conf_dir:
            groups.setdefault(path.parent.relative_to(conf_dir).as_posix(), []).append(path.stem)
    return groups


def app_help(prog: str, summary: str, example: str, conf_dir: Path, config_name: str = "train") -> str:
    """The help text of a Hydra app whose primary config is `conf_dir/config_name.yaml`."""
    defaults = _defaults(conf_dir / f"{config_name}.yaml")
    options = _options(conf_dir)
    groups = [g for g in defaults if g in options] + [g for g in options if g not in defaults]
    width = max(map(len, groups), default=0)
    lines = [f"{prog}: {summary}", "",
             f"Usage: {prog} [GROUP=OPTION ...] [KEY=VALUE ...]   (Hydra overrides; -m sweeps)",
             f"   e.g. {prog} {example}", "",
             f"Config groups (folders of {conf_dir}; [default]):"]
    for group in groups:
        default, comment = defaults.get(group, ("null", ""))
        choices = ", ".join(f"[{o}]" if o == default else o for o in options[group])
        lines.append(f"  {group:<{width}}  {choices}" + (f"  # {comment}" if comment else ""))
    lines += ["",
              f"Every other key is set with KEY=VALUE; conf/{config_name}.yaml and the group files say what each does.",
              f"  {prog} [OVERRIDES] --cfg job   print the composed config and exit",
              f"  {prog} [OVERRIDES] --help      Hydra's full help, with the composed config",
              f"  {prog} --hydra-help            Hydra's own flags (--multirun, --config-dir, --info, ...)"]
    return "\n".join(lines)


def wants_quick_help(argv: list[str]) -> bool:
    """A bare `--help`/`-h`: answered by app_help; anything more goes to Hydra."""
    return argv in (["--help"], ["-h"])
