"""Import Result refuses a result folder whose mesh.npz or job.json is wrong, in one line that
names the file and what is wrong, and the file stays as it was; a good folder still imports.

The folders are made here (numpy) and all imported in one Blender process (scenario
`import_checks`), in the newest Blender only: the checks are numpy, and the one bpy call
they add (`Mesh.validate`) is the same in every supported version.
"""
import json
import subprocess
import zipfile

import numpy as np

TETRA_V = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
TETRA_F = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]], dtype=np.int32)
TETRA_C = np.full((4, 4), 0.5, dtype=np.float32)


def result(folder, vertices=TETRA_V, faces=TETRA_F, colors=TETRA_C, job=None):
    folder.mkdir(parents=True)
    np.savez(folder / "mesh.npz", vertices=vertices, faces=faces, colors=colors)
    if job is not None:
        (folder / "job.json").write_bytes(job if isinstance(job, bytes) else job.encode())
    return str(folder)


def with_status(folder, **status):
    """A whole mesh.npz beside the status.json a run left: the folder's state is what counts."""
    path = result(folder)
    (folder / "status.json").write_text(json.dumps(status))
    return path


def dead_pid() -> int:
    """The pid of a process that has ended (a SIGKILLed engine's, as far as the reader can tell)."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def with_nan(a, row=1):
    a = a.copy()
    a[row, 0] = np.nan
    return a


def huge_header(folder, rows=10**12):
    """A valid npz whose vertices.npy header then declares `rows` rows over 36 bytes of data."""
    path = result(folder)
    with zipfile.ZipFile(folder / "mesh.npz") as zf:
        kept = {name: zf.read(name) for name in ("faces.npy", "colors.npy")}
    with zipfile.ZipFile(folder / "mesh.npz", "w") as zf:
        with zf.open("vertices.npy", "w") as fp:
            np.lib.format.write_array_header_1_0(fp, {"descr": "<f4", "fortran_order": False, "shape": (rows, 3)})
            fp.write(TETRA_V[:3].tobytes())
        for name, data in kept.items():
            zf.writestr(name, data)
    return path


def cases(root):
    """({case: folder}, {bad case: words its refusal must hold}); the folders made under `root`."""
    odd_colors = TETRA_C.copy()
    odd_colors[0] = [1.0005, -0.0005, 0.5, 1.0]  # rounding slack: clipped, not refused
    degenerate_few = np.concatenate([TETRA_F, [[1, 1, 2]], TETRA_F[:1]])  # one degenerate, one duplicate
    bad = {
        "nan_vertices": (lambda d: result(d, vertices=with_nan(TETRA_V)), ["'vertices'", "NaN or infinite", "row 1"]),
        "inf_colors": (lambda d: result(d, colors=np.where(np.eye(4, dtype=bool), np.inf, TETRA_C).astype(np.float32)),
                       ["'colors'", "NaN or infinite"]),
        "float64_overflow": (lambda d: result(d, vertices=TETRA_V.astype(np.float64) * 1e300),
                             ["'vertices'", "NaN or infinite"]),
        "float_faces": (lambda d: result(d, faces=TETRA_F.astype(np.float32)),
                        ["'faces' holds floating point", "int32 vertex indices"]),
        "bool_faces": (lambda d: result(d, faces=TETRA_F.astype(bool)), ["'faces' holds boolean"]),
        "zero_faces": (lambda d: result(d, faces=np.zeros_like(TETRA_F)), ["all 4 faces are degenerate"]),
        "out_of_range_faces": (lambda d: result(d, faces=TETRA_F + 10), ["face indices", "outside 0..3"]),
        "complex_vertices": (lambda d: result(d, vertices=TETRA_V.astype(np.complex64)), ["'vertices' holds complex"]),
        "uint8_colors": (lambda d: result(d, colors=(TETRA_C * 255).astype(np.uint8)),
                         ["'colors' holds integer", "floats in 0..1"]),
        "colors_0_255": (lambda d: result(d, colors=TETRA_C * 255), ["'colors' range from", "floats in 0..1"]),
        "string_vertices": (lambda d: result(d, vertices=TETRA_V.astype(str)), ["'vertices' holds text"]),
        "huge_header": (lambda d: huge_header(d), ["'vertices' declares 1,000,000,000,000 rows", "50,000,000"]),
        "short_data": (lambda d: huge_header(d, rows=1000), ["'vertices' declares 1,000 rows but holds fewer"]),
        "many_dims": (lambda d: result(d, vertices=np.zeros((1,) * 30, np.float32)),
                       ["'vertices' must have shape (N, 3)", "..."]),
        "deep_job": (lambda d: result(d, job="[" * 100_000 + "]" * 100_000), ["job.json is not a readable job (nested more", "delete it"]),
        "deep_job_parsable": (lambda d: result(d, job='{"a": ' + "[" * 200 + "]" * 200 + "}"),
                              ["job.json is not a readable job (nested more than 64 levels deep)"]),
        "list_job": (lambda d: result(d, job="[1, 2]"), ["job.json holds a JSON list", "delete it"]),
        "bad_utf8_job": (lambda d: result(d, job=b'{"prompt": "\xff"}'),
                         ["job.json is not a readable job (", "delete it"]),
        "huge_job": (lambda d: _sparse(result(d), 17 * 2**20), ["job.json is larger than 16 MiB"]),
        "killed_run": (lambda d: with_status(d, state="running", pid=dead_pid(), steps=10),
                       ["No finished result in", "status is interrupted", "ended without saying so"]),
        "failed_run": (lambda d: with_status(d, state="failed", pid=1, steps=10, message="out of memory"),
                       ["No finished result in", "status is failed"]),
    }
    good = {
        "good": lambda d: result(d, job=json.dumps({"prompt": "a good tetrahedron"})),
        "good_with_slack": lambda d: result(d, faces=degenerate_few, colors=odd_colors),
    }
    makers = {name: make for name, (make, _words) in bad.items()} | good
    folders = {name: make(root / name) for name, make in makers.items()}
    return folders, {name: words for name, (_make, words) in bad.items()}


def _sparse(folder, size):
    """A job.json of `size` zero bytes, written in no time (a sparse file)."""
    with open(f"{folder}/job.json", "wb") as fh:
        fh.truncate(size)
    return folder


def test_bad_results_are_refused_in_one_line_and_change_nothing(newest_blender, run_scenario, tmp_path):
    folders, expected = cases(tmp_path / "cases")
    facts = run_scenario(newest_blender, "import_checks", cases=folders, timeout=300)
    for case, words in expected.items():
        got = facts[case]
        assert got["returned"] is None, (case, got)  # the operator reported an error, not a traceback
        message = got["message"]
        assert "Traceback" not in message and "\n" not in message and len(message) < 400, (case, message)
        assert folders[case] in message, (case, message)  # names the file
        for word in words:
            assert word in message, (case, word, message)
        assert got["scene_same"] and got["changes"] == {}, (case, got)

    good = facts["good"]
    assert good["returned"] == ["FINISHED"], good
    assert good["object"] == {"name": "a good tetrahedron", "vertices": 4, "faces": 4, "finite": True,
                              "color_range": [0.5, 0.5], "has_job": True, "material": True}
    assert set(good["changes"]) == {"objects", "meshes", "materials"}, good["changes"]

    slack = facts["good_with_slack"]  # degenerate face dropped, duplicate removed by validate, colours clipped
    assert slack["returned"] == ["FINISHED"], slack
    assert slack["object"]["faces"] == 4 and slack["object"]["color_range"] == [0.0, 1.0], slack
    assert not slack["object"]["has_job"]
