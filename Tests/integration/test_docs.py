# SPDX-License-Identifier: MIT
"""The docs against the code, where a machine can compare them: every metric,
policy-file key and socket option the docs' tables name exists in the code,
and every one the code has is in the tables. No root needed."""
import os
import re

from support import KEEPALIVE, ROOT, run

OPERATING = os.path.join(ROOT, "docs", "operating.md")


def read(*parts):
    with open(os.path.join(ROOT, *parts)) as f:
        return f.read()


def table_names(text, header, pattern):
    """The first-column names of the markdown table under the row starting with `header`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    names = set()
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        first = line.split("|")[1]
        names |= set(re.findall(pattern, first))
    return names


def test_every_metric_in_the_code_is_in_the_docs_table_and_the_reverse():
    source = read("Sources", "KeepaliveAgent", "AgentMetrics.swift")
    in_code = set()
    for subsystem, name, unit in re.findall(r'named\(\s*(nil|"[a-z_]+"),\s*"([a-z_]+)",\s*"([a-z_]*)"', source):
        parts = ["keepalive"] + ([subsystem.strip('"')] if subsystem != "nil" else []) + [name] + ([unit] if unit else [])
        in_code.add("_".join(parts))
    assert len(in_code) >= 15, in_code  # the pattern still reads the source
    documented = table_names(read("docs", "operating.md"), "| metric", r"`(keepalive_[a-z_]+)")
    assert documented == in_code, (sorted(documented - in_code), sorted(in_code - documented))


def test_every_option_and_key_of_an_entry_is_in_the_docs_table_and_the_reverse(tmp_path):
    documented = table_names(read("docs", "operating.md"), "| key", r"^ `([a-z_]+)`")
    # The agent names the keys it takes when it refuses one.
    bad = tmp_path / "bad.yaml"
    bad.write_text("policies:\n  - cgroup: x\n    nonsense: 1\n")
    result = run([KEEPALIVE, "agent", "--check", "--config", str(bad)], check=False)
    assert result.returncode != 0 and "(known: " in result.stderr, result.stderr
    accepted = set(re.findall(r"[a-z_]+", result.stderr.split("(known: ", 1)[1]))
    assert documented == accepted, (sorted(documented - accepted), sorted(accepted - documented))


def test_every_socket_option_has_its_flag_in_the_cli():
    documented = table_names(read("docs", "operating.md"), "| key", r"^ `([a-z_]+)`")
    options = {"keepidle", "keepintvl", "keepcnt", "user_timeout", "syncnt", "maxseg", "window_clamp"} & documented
    help_text = run([KEEPALIVE, "attach", "--help"]).stdout
    flags = set(re.findall(r"--([a-z-]+)", help_text))
    assert options and {option.replace("_", "-") for option in options} <= flags, (options, flags)
