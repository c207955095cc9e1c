from __future__ import annotations

import pytest

from jobplatform.settings import _GROUPS, PROJECT_ROOT, Settings


def _variables() -> list[str]:
    names = [name.upper() for name in Settings.model_fields
             if name not in _GROUPS]
    for cls in _GROUPS.values():
        prefix = str(cls.model_config.get("env_prefix", ""))
        names += [(prefix + name).upper() for name in cls.model_fields]
    return names


@pytest.mark.parametrize("variable", _variables())
def test_readme_documents_every_setting(variable: str) -> None:
    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    assert f"`{variable}`" in readme, f"{variable} is not in the README's configuration tables"


def test_readme_shards_example_runs() -> None:
    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("<!-- example: shards -->", 1)[1].split("```python", 1)[1]
    exec(compile(block.split("```", 1)[0], "README.md (shards)", "exec"), {})  # noqa: S102
