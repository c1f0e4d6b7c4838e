"""Cluster profiles and resource requests: every mistake names its field before anything is submitted."""
import pytest
import yaml

from slurm.profile import PROFILES, Profile, ProfileError, available_profiles, load_profile, mem_mb, resources, time_minutes


def write(tmp_path, **fields):
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(fields))
    return path


def test_shipped_profiles_load_and_the_gpu_example_is_commented():
    assert {"local", "gpu_example"} <= set(available_profiles())
    local = load_profile("local")
    assert (local.partition, local.gpus_per_node, local.mem) == ("local", 0, "6G")
    gpu = load_profile("gpu_example")
    assert gpu.gpus_per_node == 8 and gpu.setup and gpu.account
    text = (PROFILES / "gpu_example.yaml").read_text()
    for name in ("partition", "account", "qos", "constraint", "gpus_per_node", "cpus_per_task", "mem", "time",
                 "setup", "signal_delay_s", "max_timeout_requeues"):
        line = next(line for line in text.splitlines() if line.startswith(f"{name}:"))
        assert "#" in line, f"{name} has no comment in the example profile"


@pytest.mark.parametrize("fields, field", [
    ({"gpus_per_node": 4}, "partition"),                                   # missing partition
    ({"partition": ""}, "partition"),
    ({"partition": "gpu", "gpus_per_node": -1}, "gpus_per_node"),
    ({"partition": "gpu", "gpus_per_node": "eight"}, "gpus_per_node"),
    ({"partition": "gpu", "cpus_per_task": 0}, "cpus_per_task"),
    ({"partition": "gpu", "mem": "lots"}, "mem"),
    ({"partition": "gpu", "time": "forever"}, "time"),
    ({"partition": "gpu", "time": 0}, "time"),
    ({"partition": "gpu", "setup": "module load cuda"}, "setup"),
    ({"partition": "gpu", "gpus_per_node": 4, "tasks_per_node": 8}, "tasks_per_node"),
    ({"partition": "gpu", "signal_delay_s": -5}, "signal_delay_s"),
    ({"partition": "gpu", "max_timeout_requeues": 1.5}, "max_timeout_requeues"),
    ({"partition": "gpu", "acount": "typo"}, "acount"),                   # unknown field
])
def test_a_bad_profile_names_its_field(tmp_path, fields, field):
    with pytest.raises(ProfileError) as err:
        load_profile(write(tmp_path, **fields))
    assert err.value.field == field
    assert str(err.value).startswith(f"{field}:")


def test_an_unknown_field_lists_the_allowed_ones(tmp_path):
    with pytest.raises(ProfileError, match="allowed fields: partition, account"):
        load_profile(write(tmp_path, partition="gpu", acount="typo"))


def test_an_unknown_profile_name_lists_the_available_ones():
    with pytest.raises(ProfileError, match="available: .*gpu_example.*local") as err:
        load_profile("nonexistent")
    assert err.value.field == "--profile"


def test_ranks_split_into_nodes_with_one_task_per_gpu():
    gpu = Profile(name="g", partition="gpu", gpus_per_node=8, time="02:00:00")
    r = resources(gpu, 16)
    assert (r.nodes, r.tasks_per_node, r.gpus_per_node, r.time_min) == (2, 8, 8, 120)
    r = resources(gpu, 4)
    assert (r.nodes, r.tasks_per_node, r.gpus_per_node) == (1, 4, 4)
    r = resources(gpu, 8, nodes=2, time="1-00:00:00")
    assert (r.nodes, r.tasks_per_node, r.time_min) == (2, 4, 1440)


def test_cpu_runs_use_one_task_per_rank():
    cpu = Profile(name="c", partition="cpu", tasks_per_node=2)
    r = resources(cpu, 2)
    assert (r.nodes, r.tasks_per_node, r.gpus_per_node, r.ranks) == (1, 2, 0, 2)
    assert (resources(cpu, 4).nodes, resources(cpu, 4).tasks_per_node) == (2, 2)


@pytest.mark.parametrize("kwargs, field", [
    ({"nproc": 16, "nodes": 1}, "gpus_per_node"),     # more GPUs per node than the profile has
    ({"nproc": 12, "nodes": 5}, "--nproc"),          # 12 ranks do not split evenly over 5 nodes
    ({"nproc": 0}, "--nproc"),
    ({"nproc": 8, "nodes": 0}, "--nodes"),
    ({"nproc": 8, "time": "soon"}, "--time"),
])
def test_a_bad_request_names_its_field(kwargs, field):
    gpu = Profile(name="g", partition="gpu", gpus_per_node=8)
    nproc = kwargs.pop("nproc")
    with pytest.raises(ProfileError) as err:
        resources(gpu, nproc, **kwargs)
    assert err.value.field == field


@pytest.mark.parametrize("text, minutes", [(90, 90), ("90", 90), ("01:30:00", 90), ("30:30", 31),
                                           ("2-00", 2880), ("1-02:03", 1563), ("1-00:00:01", 1441)])
def test_slurm_time_formats(text, minutes):
    assert time_minutes(text) == minutes


def test_slurm_memory_units():
    assert (mem_mb("16G"), mem_mb("500M"), mem_mb("500"), mem_mb("1T"), mem_mb("2048K")) == (16384, 500, 500, 1048576, 2)


@pytest.mark.parametrize("fields, field", [
    ({"partition": "gpu", "gpus_per_node": True}, "gpus_per_node"),     # a bool is not a count
    ({"partition": "gpu", "cpus_per_task": 2.0}, "cpus_per_task"),
    ({"partition": 7}, "partition"),
    ({"partition": "gpu", "account": "  "}, "account"),
])
def test_bools_floats_and_blank_strings_are_refused_naming_the_field(fields, field):
    from scaling.validate import ConfigError

    with pytest.raises(ProfileError) as err:
        Profile(name="p", **fields)
    assert err.value.field == field and isinstance(err.value, ConfigError)
    assert str(err.value).endswith("(profile 'p')")


@pytest.mark.parametrize("kwargs, field", [({"nproc": True}, "--nproc"), ({"nproc": 8, "nodes": 1.0}, "--nodes")])
def test_a_request_refuses_bools_and_floats(kwargs, field):
    with pytest.raises(ProfileError) as err:
        resources(Profile(name="g", partition="gpu", gpus_per_node=8), **kwargs)
    assert err.value.field == field


def test_launcher_resources_per_launcher():
    from slurm.profile import launcher_resources

    profile, res = launcher_resources("slurm", "gpu_example", 16, time="02:00:00")
    assert profile.name == "gpu_example" and (res.nodes, res.tasks_per_node, res.time_min) == (2, 8, 120)
    profile, res = launcher_resources("local", None, 2)        # the 'local' profile, one node; no profile back
    assert profile is None and (res.nodes, res.tasks_per_node, res.gpus_per_node) == (1, 2, 0)
    assert launcher_resources("local", "local", 1, nodes=1)[1].ranks == 1
    assert launcher_resources("debug", None, 3) == (None, None)


@pytest.mark.parametrize("args, kwargs, cli_field, spec_field", [
    (("slurm", None, 8), {}, "--profile", "launcher.profile"),
    (("slurm", "nonexistent", 8), {}, "--profile", "launcher.profile"),
    (("slurm", "gpu_example", 0), {}, "--nproc", "launcher.nproc"),
    (("slurm", "gpu_example", 8), {"time": "soon"}, "--time", "launcher.time"),
    (("slurm", "gpu_example", 16), {"nodes": 1}, "gpus_per_node", "launcher.gpus_per_node"),
    (("local", None, 4), {}, "tasks_per_node", "launcher.tasks_per_node"),   # the local node takes 2 ranks
    (("cloud", None, 1), {}, "--launcher", "launcher.type"),
])
def test_launcher_resources_names_the_flag_or_the_spec_key(args, kwargs, cli_field, spec_field):
    from slurm.profile import launcher_resources

    with pytest.raises(ProfileError) as err:
        launcher_resources(*args, **kwargs)
    assert err.value.field == cli_field
    with pytest.raises(ProfileError) as err:
        launcher_resources(*args, **kwargs, prefix="launcher.")
    assert err.value.field == spec_field


def test_a_slurm_launcher_without_a_profile_lists_the_available_ones():
    from slurm.profile import launcher_resources

    with pytest.raises(ProfileError, match="--launcher slurm needs a profile; available: .*gpu_example"):
        launcher_resources("slurm", None, 8)
    with pytest.raises(ProfileError, match="a slurm launcher needs a profile; available: "):
        launcher_resources("slurm", None, 8, prefix="launcher.")
