"""Where-layer: cluster profiles, resources, and submitting runs (SLURM via submitit, local, debug).

The one-run layer `scaling` never imports this package (only the entry point `scaling.cli`
does, to assemble the commands); this package calls `scaling.train` in the jobs it submits.
"""
from slurm.profile import Profile, ProfileError, Resources, available_profiles, load_profile, resources

__all__ = ["Profile", "ProfileError", "Resources", "available_profiles", "load_profile", "resources"]
