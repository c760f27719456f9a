"""Import Result on batch folders, the remote preferences' way into the client, and a queued
remote job's progress line (tests/addon/test_addon_batch_import.py).

`batch_import`: a batch folder (summary.json + result folders, some not complete) imported and
undone; the same folders without summary.json; a batch with nothing complete. `remote_prefs`
(no server): Fingerprint and TLS as drawn and as the client runner builds carries them; a
Generation fed `queued` messages as the worker's reader would, read back from scene.sds, the
panel's progress line and the console lines.
"""
import importlib
import os
import tempfile

import bpy
import numpy as np

from .common import ADDON, LayoutRecorder, addon_module, call, changes, empty_scene, install, panel_drawn, snapshot


def reported(op, **kwargs):
    """(returned, error, what the operator reported): background Blender prints reports on
    stdout, so fd 1 goes to a file for the call."""
    with tempfile.TemporaryFile() as sink:
        saved = os.dup(1)
        os.dup2(sink.fileno(), 1)
        try:
            ret, err = call(op, **kwargs)
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        sink.seek(0)
        return ret, err, sink.read().decode("utf-8", "replace")


def world_box(ob):
    me = ob.data
    co = np.empty(len(me.vertices) * 3, dtype=np.float64)
    me.vertices.foreach_get("co", co)
    m = np.array(ob.matrix_world)
    world = co.reshape(-1, 3) @ m[:3, :3].T + m[:3, 3]
    return [world.min(axis=0).tolist(), world.max(axis=0).tolist()]


def run(args):
    install(args["zip"])
    if args["scenario"] == "remote_prefs":
        return remote_prefs(args)
    out = {}
    scene = empty_scene()
    bpy.ops.ed.undo_push(message="before")
    before = snapshot()
    ret, err, printed = reported(bpy.ops.sds.import_result, directory=args["batch"])
    added = [ob for ob in scene.objects if ob.name not in before["objects"]]
    index = {name: i for i, name in enumerate(args["order"])}
    added.sort(key=lambda ob: index.get(os.path.basename(ob.get("sds_result", "")), len(index)))
    out["batch"] = {
        "returned": ret, "message": err, "printed": printed,
        "objects": [{"name": ob.name, "folder": os.path.basename(ob.get("sds_result", "")), "box": world_box(ob),
                     "selected": ob.select_get(),
                     "rotation_scale_kept": np.allclose(np.array(ob.matrix_world)[:3, :3], np.eye(3))}
                    for ob in added],  # in the batch's order, so each one's grid cell can be checked
        "active": bpy.context.view_layer.objects.active and bpy.context.view_layer.objects.active.name,
        "changes": changes(before)}
    # Background Blender pushes no undo step after an operator called from Python; the UI pushes
    # one after an UNDO operator returns: so here. One undo must take every object back.
    bpy.ops.ed.undo_push(message="Import Result")
    bpy.ops.ed.undo()
    out["batch"]["after_undo"] = changes(before)

    for case in ("no_summary", "none_complete"):
        empty_scene()
        before = snapshot()
        ret, err, printed = reported(bpy.ops.sds.import_result, directory=args[case])
        out[case] = {"returned": ret, "message": err.strip(), "printed": printed,
                     "names": sorted(set(snapshot()["objects"]) - set(before["objects"])),
                     "changes": changes(before)}
    return out


def remote_prefs(args):
    """Fingerprint and TLS from the preferences into the client; the queued progress line."""
    prefs = bpy.context.preferences.addons[ADDON].preferences
    runner = addon_module("runner")
    session = addon_module("session")
    out = {"defaults": {"tls": prefs.remote_tls, "fingerprint": prefs.remote_fingerprint}}
    prefs.worker_mode = "REMOTE"
    prefs.remote_address, prefs.remote_token = "127.0.0.1:9", "a-token"

    class Drawn:
        """The preferences as their draw() sees them, with a recording layout."""

        def __init__(self):
            self.layout = LayoutRecorder([])

        def __getattr__(self, name):
            return getattr(prefs, name)

    def drawn():
        proxy = Drawn()
        type(prefs).draw(proxy, bpy.context)
        return proxy.layout.drawn

    out["drawn_tls"] = drawn()
    prefs.remote_tls = False
    out["drawn_plain"] = drawn()
    prefs.remote_tls = True
    fingerprint = "SHA256:" + ":".join(f"{b:02X}" for b in range(32))
    clients = {}
    for name, (text, tls) in {"pinned": (f"  {fingerprint}\n", True), "plain": ("", False)}.items():
        prefs.remote_fingerprint, prefs.remote_tls = text, tls
        try:
            client = runner._remote_client(prefs)(args["tmp"])
            clients[name] = {"fingerprint": getattr(client, "fingerprint", "<no attribute>"),
                             "tls": getattr(client, "tls", "<no attribute>"),
                             "connected": getattr(client, "sock", None) is not None}
        except Exception as exc:  # the client of this checkout may not take them yet: say so
            clients[name] = {"error": f"{type(exc).__name__}: {exc}"}
    out["clients"], out["fingerprint"] = clients, fingerprint

    # A Generation fed what a remote worker's reader queues: hello, then its place in line.
    scene = empty_scene()
    client = addon_module("remote_client").RemoteClient("127.0.0.1", 9, "a-token", args["tmp"],
                                                       os.path.join(args["tmp"], "worker.log"))
    generation = session.Generation(client, {}, args["tmp"], args["tmp"])
    console = []
    progress = addon_module("console_progress").ConsoleProgress("a red cube",
                                                                out=lambda line, **_: console.append(line))
    protocol = importlib.import_module(f"{ADDON}.protocol")
    lines = [("hello", protocol.encode(protocol.hello("worker"))),
             ("second", b'{"type": "queued", "position": 2, "length": 3}'),
             ("heartbeat", b'{"type": "heartbeat", "busy": true}'),
             ("first", b'{"type": "queued", "position": 1, "length": 3}'),
             ("newer_type", b'{"type": "something_a_newer_worker_sends", "x": 1}'),
             ("stage", b'{"type": "stage", "name": "loading model"}'),
             ("progress", b'{"type": "progress", "step": 3, "steps": 10, "seconds_left": 7.0}')]
    seen = {}
    runner._active = generation  # the panel draws the progress line of the active run
    try:
        for name, line in lines:
            client.queue.put(protocol.decode(line))  # what the client's reader thread does with a line
            generation.pump()
            runner.sync_scene(generation, scene)
            progress(generation)
            drawn = panel_drawn(bpy.context)
            seen[name] = {"status": scene.sds.status, "state": generation.state, "finished": generation.finished,
                          "progress_line": [x[len("progress:"):] for x in drawn if x.startswith("progress:")]}
    finally:
        runner._active = None
    out["queued"], out["console"] = seen, console
    return out
