"""The torch half of blender-sds: job in, coloured mesh out. Never imports bpy."""
