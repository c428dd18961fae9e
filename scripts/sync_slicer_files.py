"""Sync MVCTEnhance/CMakeLists.txt's Python file lists (the module's own and the library's), the sample
checksums and Resources/models/models.json after adding files, regenerating the sample or re-exporting
a shipped model (run: python scripts/sync_slicer_files.py)."""
import hashlib, json, re, sys
from pathlib import Path
repo = Path(__file__).resolve().parents[1]
cm = repo / "MVCTEnhance/CMakeLists.txt"
text = cm.read_text()
# What Slicer ships of the library: the runtime engine and the file jobs/CLI of its commands (the
# trainer, the data factory and the study are the pip package's, not the extension's).
lib = repo / "MVCTEnhanceLib"
shipped = [lib / "__init__.py", lib / "cli.py", lib / "filejobs.py"] + sorted((lib / "engine").glob("*.py"))
libs = "\n".join(f"  {p.relative_to(repo).as_posix()}" for p in shipped)
text = re.sub(r"(set\(MVCTENHANCELIB_PYTHON_SCRIPTS\n).*?(\n  \))", lambda m: m.group(1) + libs + m.group(2), text, flags=re.S)
module = repo / "MVCTEnhance"
own = ["${MODULE_NAME}.py"] + [p.relative_to(module).as_posix() for folder in ("MVCTEnhanceMRML", "Scripts")
                               for p in sorted((module / folder).glob("*.py"))]
text = re.sub(r"(set\(MODULE_PYTHON_SCRIPTS\n).*?(\n  \))", lambda m: m.group(1) + "\n".join(f"  {s}" for s in own) + m.group(2), text, flags=re.S)
cm.write_text(text)
mod = repo / "MVCTEnhance/MVCTEnhance.py"
t = mod.read_text()
for const, f in (("SAMPLE_MVCT_SHA256", "sample_mvct.nrrd"), ("SAMPLE_PLANNING_CT_SHA256", "sample_planning_ct.nrrd")):
    p = repo / "Resources/sample" / f
    if p.exists():
        t = re.sub(rf'{const} = "[0-9a-f]{{64}}"', f'{const} = "{hashlib.sha256(p.read_bytes()).hexdigest()}"', t)
mod.write_text(t)
listing = repo / "Resources/models/models.json"
if listing.exists():  # the shipped models' expected sha256, name and version, from the files themselves
    sys.path.insert(0, str(repo))
    from MVCTEnhanceLib.engine.modelfile import read_card
    data = json.loads(listing.read_text())
    for entry in data["models"]:
        p = listing.parent / entry["file"]
        if p.exists():
            card = read_card(p)
            entry.update(name=card.name, version=card.version, sha256=hashlib.sha256(p.read_bytes()).hexdigest())
    listing.write_text(json.dumps(data, indent=2) + "\n")
