"""The add-on scenarios, one module per scenario (or per group of closely related ones),
each with `run(args) -> dict` of the facts it saw. They run inside a Blender-side Python
only, loaded by tests/addon/driver.py; the tests in tests/addon/test_addon_*.py judge
the facts. Shared Blender-side helpers are in common.py."""

# scenario name (the payload's "scenario") -> module in this package
SCENARIOS = {"install": "install", "rig": "rig", "errors": "errors", "e2e": "e2e", "lifecycle": "lifecycle",
             "faults": "faults", "remote": "remote", "pocket": "pocket",
             "methods": "methods", "import_checks": "import_checks",
             "artist_mesh": "artist_mesh", "artist_mesh_e2e": "artist_mesh",
             "batch_import": "batch_import", "remote_prefs": "batch_import"}
