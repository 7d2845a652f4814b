"""Schemathesis hooks of the fuzz layer, loaded by the `schemathesis` CLI (SCHEMATHESIS_HOOKS).

Path parameters drawn only from the document's patterns almost never name a course or account
the store holds, so nearly every request would end at the 404. This hook mixes ids the test
stored (AUDIT_FUZZ_IDS, JSON: parameter name -> values) into the drawn ones, so the 200 path
is fuzzed too, with every query parameter still drawn.
"""

from __future__ import annotations

import json
import os
from typing import Any

import schemathesis
from hypothesis import strategies as st

KNOWN_IDS: dict[str, list[str]] = json.loads(os.environ.get("AUDIT_FUZZ_IDS", "{}"))


@schemathesis.hook
def before_generate_path_parameters(context: schemathesis.HookContext, strategy: Any) -> Any:
    operation = context.operation
    if operation is None:
        return strategy
    for name, values in KNOWN_IDS.items():
        if "{" + name + "}" in operation.path and values:
            known = st.sampled_from([{name: value} for value in values])
            return st.one_of(strategy, known)
    return strategy
