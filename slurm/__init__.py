"""Where-layer: cluster profiles, resources, and submitting runs (SLURM via submitit, local, debug).

`scaling` never imports this package; it only names the callable that runs here.
"""
from slurm.profile import Profile, ProfileError, Resources, available_profiles, load_profile, resources

__all__ = ["Profile", "ProfileError", "Resources", "available_profiles", "load_profile", "resources"]
