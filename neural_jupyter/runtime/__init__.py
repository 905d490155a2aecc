"""Where code runs and what it runs on: platform and accelerator detection, GPU settings, bundles.

Nothing here imports a deep-learning framework or touches widgets.
"""
