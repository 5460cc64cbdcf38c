"""Image sets wm makes or ships with: synthetic images, lesion tasks, pydicom-data's clinical split.

Lives here: the generators behind `wm data` and the fixed train / held-out split of real images.
May import wm's core and io.
"""
