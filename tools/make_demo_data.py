"""Build the demo's packaged CIFAR-10 subset from the two archives in ../shared/data (maintainers only).

Writes ``src/fspkd/experiments/demo_data/cifar10-demo.tar.gz``: the first PER_CLASS training JPEGs of every class
(``train/<class>/NNNN.jpg``) and all 2,000 test JPEGs (``test/<class>/NNNN.jpg``), byte for byte as they are in the
archives (no re-encoding), in a reproducible archive (sorted names, fixed times and owners), and prints its
SHA-256 for ``fspkd.experiments.demo.DEMO_DATA_SHA256``.

    python tools/make_demo_data.py [--per-class 1000]
"""

import argparse
import gzip
import hashlib
import io
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
OUT = ROOT / "src" / "fspkd" / "experiments" / "demo_data" / "cifar10-demo.tar.gz"


def jpegs(archive: Path, keep) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile() and keep(m.name)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-class", type=int, default=1000)
    per_class = parser.parse_args().per_class
    files = jpegs(SHARED / "cifar10-train-jpg.tar.gz", lambda name: int(Path(name).stem) < per_class)
    files.update(jpegs(SHARED / "cifar10-test-2000-jpg.tar.gz", lambda name: True))
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(files[name]), 0, 0o644
            tar.addfile(info, io.BytesIO(files[name]))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_bytes(gzip.compress(raw.getvalue(), compresslevel=9, mtime=0))
    print(f"{OUT.relative_to(ROOT)}: {len(files)} images, {OUT.stat().st_size} bytes, "
          f"sha256 {hashlib.sha256(OUT.read_bytes()).hexdigest()}")


if __name__ == "__main__":
    main()
