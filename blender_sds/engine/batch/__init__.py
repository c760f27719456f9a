"""`python -m blender_sds.engine batch`: many jobs on a Ray cluster, each into its own result folder.

Read in order: manifest.py (the jobs, every one validated before anything starts), plan.py
(folders, and which jobs a rerun skips), runner.py (Ray: one task per job, tasks.py the
task itself), progress.py (the bar or JSON lines), summary.py (summary.json and the contact
sheet), cli.py (the flags). docs/SCALING.md is the user's page.
"""
