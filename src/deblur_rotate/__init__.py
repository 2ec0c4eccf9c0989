"""deblur-rotate: from one motion-blurred face photo to sharp short videos, from any viewpoint.

A reimplementation of "Learning to Deblur and Rotate Motion-Blurred Faces" (Meishvili et al., BMVC 2021).
"""

__version__ = "0.1.0"
