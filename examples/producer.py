import os, sys, time, msgpack

def spool(spool_dir, name, chunks):
    """Writes chunks (dicts) as one spool file; watch never sees it half-written."""
    tmp = os.path.join(spool_dir, "tmp", name)
    with open(tmp, "wb") as f:
        for chunk in chunks:
            f.write(msgpack.packb(chunk, use_bin_type=True))
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, os.path.join(spool_dir, "incoming", name))

spool(sys.argv[1], f"handbook-{time.time_ns()}.msgpack", [
    {"doc_id": "handbook", "chunk_index": i, "content": text, "chunk_count": 2,
     "metadata": {"lang": "en"}, "created_at": "2026-12-01T09:00:00Z"}
    for i, text in enumerate(["Refunds take 14 days.", "Exchanges take 7."])
])
