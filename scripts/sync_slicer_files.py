"""Sync MVCTEnhance/CMakeLists.txt's library list and the sample checksums after adding library files or regenerating the sample (run: python scripts/sync_slicer_files.py)."""
import hashlib, re
from pathlib import Path
repo = Path(__file__).resolve().parents[1]
cm = repo / "MVCTEnhance/CMakeLists.txt"
text = cm.read_text()
libs = "\n".join(f"  {p.relative_to(repo).as_posix()}" for p in sorted((repo / "MVCTEnhanceLib").rglob("*.py")) if "__pycache__" not in p.parts)
text = re.sub(r"(set\(MVCTENHANCELIB_PYTHON_SCRIPTS\n).*?(\n  \))", lambda m: m.group(1) + libs + m.group(2), text, flags=re.S)
cm.write_text(text)
mod = repo / "MVCTEnhance/MVCTEnhance.py"
t = mod.read_text()
for const, f in (("SAMPLE_MVCT_SHA256", "sample_mvct.nrrd"), ("SAMPLE_PLANNING_CT_SHA256", "sample_planning_ct.nrrd")):
    p = repo / "Resources/sample" / f
    if p.exists():
        t = re.sub(rf'{const} = "[0-9a-f]{{64}}"', f'{const} = "{hashlib.sha256(p.read_bytes()).hexdigest()}"', t)
mod.write_text(t)
