"""The repository is self-contained: every file its docs, configs and code cite exists inside it."""
import re

from helpers import REPO

CITED = re.compile(r"(?<![\w/.])(?:\.\./shared/[\w./-]+|(?:docs|configs|resizer_jax|launch|tests|"
                   r"notebooks)/[\w./-]*\w)")
# Cited on purpose although not in the repository, with the reason.
NOT_FILES = {
    "configs/x.py": "the placeholder in the config-argument syntax",
    # docs/performance.md's older figures came from it; resizer_jax/bench_torch.py replaces it.
    "../shared/bench/torch_reference.py": "where the PyTorch reference came from (history)",
}


def cited_paths():
  sources = [REPO / "README.md", *(REPO / "docs").rglob("*.md"), *(REPO / "configs").glob("*.py"),
             *(REPO / "resizer_jax").rglob("*.py"), *(REPO / "launch").iterdir()]
  for source in sources:
    if source.is_file():
      for match in CITED.finditer(source.read_text()):
        yield source.relative_to(REPO), match.group(0).rstrip(".")


def test_every_cited_file_exists_in_the_repository():
  missing = sorted({(str(src), path) for src, path in cited_paths()
                    if path not in NOT_FILES and not (REPO / path).exists()})
  assert not missing, missing


def test_nothing_cites_the_developers_reference_outside_the_repository():
  sources = [REPO / "README.md", *(REPO / "docs").rglob("*.md"), *(REPO / "configs").glob("*.py"),
             *(REPO / "resizer_jax").rglob("*.py")]
  assert not [str(s) for s in sources if "REFERENCE.md" in s.read_text() or
              "REFERENCE:" in s.read_text()]
