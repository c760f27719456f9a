"""The files of a result folder, by name: what the engine writes, the add-on imports and a
remote worker sends back (standard library only).

One list for all of them, so no side can look for a file under a name the other no longer uses.
"""
from __future__ import annotations

MESH_FILE = "mesh.npz"  # vertices, faces, linear vertex colours: what Import Result reads
PREVIEW_FILE = "preview.png"
CHECKPOINT_FILE = "checkpoint.pt"  # what Refine and init.resume continue from
LOG_FILE = "log.jsonl"  # the run's events, one JSON object a line
JOB_FILE = "job.json"  # the normalised job, with the paths of the side that wrote it
STATUS_FILE = "status.json"
WORKER_LOG = "worker.log"  # the add-on's copy of what the worker said on stderr

# What a remote worker sends back of a finished run, and all the add-on accepts. job.json is
# not among them: its paths are the worker's; the add-on writes its own.
RESULT_FILES = (MESH_FILE, PREVIEW_FILE, CHECKPOINT_FILE, LOG_FILE, STATUS_FILE)
