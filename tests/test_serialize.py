"""fastnn.serialize: round trips, atomic writes and every way a checkpoint can be wrong."""
import json
import os
import zipfile

import numpy as np
import pytest

import fastnn
from fastnn import Sequential, layers, optim, serialize
from fastnn.errors import DataFormatError


def make_model(dtype=np.float32, seed=0):
    return Sequential([layers.Dense(6, 5, dtype=dtype), layers.ReLU(),
                       layers.Dense(5, 3, dtype=dtype)], seed=seed)


class FakeOptimizer:
    """The optimizer interface serialize relies on (state_dict / load_state_dict)."""

    def __init__(self, model):
        self.step = 7
        self.buffers = {f"m.{n}": np.full(p.shape, 0.5, p.dtype) for n, p in
                        model.named_parameters()}
        self.buffers["v.0.weight"] = np.arange(30, dtype=np.float64).reshape(6, 5)

    def state_dict(self):
        return {"class": "Adam", "hyper": {"lr": 1e-3, "betas": [0.9, 0.999]},
                "step": self.step, "buffers": dict(self.buffers)}


def params_of(model):
    return {n: p.data.copy() for n, p in model.named_parameters()}


def assert_same_model(a, b):
    assert a.get_config() == b.get_config()
    pa, pb = params_of(a), params_of(b)
    assert list(pa) == list(pb) and pa, "no parameters to compare"
    for n in pa:
        assert pa[n].dtype == pb[n].dtype
        np.testing.assert_array_equal(pa[n], pb[n])


def members(path):
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def rewrite(path, mutate, rehash=True):
    """Apply ``mutate(dict_of_arrays)`` to a checkpoint and write it back."""
    arrays = members(path)
    mutate(arrays)
    if rehash:
        arrays["sha256"] = np.frombuffer(serialize._digest(arrays), np.uint8)
    serialize._write_npz(path, arrays)


def set_meta(arrays, meta):
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)


def get_meta(arrays):
    return json.loads(arrays["meta"].tobytes())


@pytest.fixture
def ckpt(tmp_path):
    model = make_model()
    path = str(tmp_path / "m.npz")
    serialize.save(model, path, optimizer=FakeOptimizer(model), extra={"epoch": 3})
    return path, model


# ----------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_roundtrip_model(tmp_path, dtype):
    model = make_model(dtype, seed=1)
    path = tmp_path / "x.npz"
    assert fastnn.save(model, path) == path
    loaded = fastnn.load(path)
    assert type(loaded) is Sequential and loaded is not model
    assert_same_model(model, loaded)
    # The weights sit in the loaded model's flat buffer (views kept intact).
    assert np.shares_memory(loaded.parameters()[0].data, loaded.flat_params)
    np.testing.assert_array_equal(loaded.flat_params, model.flat_params)


def test_roundtrip_optimizer_and_extra(ckpt):
    path, model = ckpt
    ck = serialize.load(path, with_optimizer=True)
    assert isinstance(ck, serialize.Checkpoint)
    assert_same_model(model, ck.model)
    st = ck.optimizer_state
    ref = FakeOptimizer(model).state_dict()
    assert st["class"] == "Adam" and st["step"] == 7 and st["hyper"] == ref["hyper"]
    assert list(st["buffers"]) == list(ref["buffers"])
    for k, v in ref["buffers"].items():
        assert st["buffers"][k].dtype == v.dtype
        np.testing.assert_array_equal(st["buffers"][k], v)
    assert ck.extra == {"epoch": 3}


def test_no_optimizer_gives_none(tmp_path):
    path = tmp_path / "x.npz"
    serialize.save(make_model(), path)
    model, opt, extra = serialize.load(path, with_optimizer=True)
    assert opt is None and extra is None


def test_extra_numpy_scalars_and_rng_state(tmp_path):
    rng = np.random.default_rng(123)
    rng.random(5)
    extra = {"epoch": np.int64(4), "loss": np.float32(0.25), "history": {"loss": [1.0, 0.5]},
             "rng": rng.bit_generator.state, "nan": float("nan")}
    path = tmp_path / "x.npz"
    serialize.save(make_model(), path, extra=extra)
    got = serialize.load(path, with_optimizer=True).extra
    assert got["epoch"] == 4 and type(got["epoch"]) is int and got["loss"] == 0.25
    assert np.isnan(got["nan"])
    # Bitwise resume of the random stream from the saved state.
    rng2 = np.random.default_rng()
    rng2.bit_generator.state = got["rng"]
    np.testing.assert_array_equal(rng2.random(4), rng.random(4))


def test_save_is_deterministic(tmp_path):
    model = make_model()
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    serialize.save(model, a, extra={"k": 1})
    serialize.save(model, b, extra={"k": 1})
    assert a.read_bytes() == b.read_bytes()


def test_file_is_plain_npz_without_pickle(ckpt):
    path, model = ckpt
    arrays = members(path)
    assert bytes(arrays["format"]) == b"fastnn-checkpoint" and int(arrays["version"]) == 1
    assert all(a.dtype != object for a in arrays.values())
    np.testing.assert_array_equal(arrays["param.000"], model.parameters()[0].data)


def test_load_uses_allow_pickle_false(ckpt, monkeypatch):
    seen = []
    real = np.load

    def spy(*args, **kwargs):
        seen.append(kwargs.get("allow_pickle"))
        return real(*args, **kwargs)

    monkeypatch.setattr(serialize.np, "load", spy)
    serialize.load(ckpt[0])
    assert seen == [False]


# ----------------------------------------------------------------------------- bad save input

def test_save_rejects_non_json_extra_and_keeps_old_file(ckpt):
    path, model = ckpt
    before = open(path, "rb").read()
    with pytest.raises(TypeError, match="extra"):
        serialize.save(model, path, extra={"f": object()})
    with pytest.raises(TypeError, match="get_config"):
        serialize.save(object(), path)
    assert open(path, "rb").read() == before
    assert os.listdir(os.path.dirname(path)) == ["m.npz"]


def test_interrupted_save_keeps_previous_checkpoint(ckpt, monkeypatch):
    path, model = ckpt
    before = open(path, "rb").read()

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(serialize.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        serialize.save(make_model(seed=5), path)
    assert open(path, "rb").read() == before
    assert os.listdir(os.path.dirname(path)) == ["m.npz"]      # temp file removed


# ----------------------------------------------------------------------------- bad files

def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        serialize.load(tmp_path / "none.npz")


@pytest.mark.parametrize("content, msg", [
    (b"", "not an .npz/zip"),
    (b"hello, this is not a checkpoint", "not an .npz/zip"),
    (b"PK\x03\x04" + b"\x00" * 40, "not an .npz/zip"),
])
def test_foreign_bytes(tmp_path, content, msg):
    p = tmp_path / "f.npz"
    p.write_bytes(content)
    with pytest.raises(DataFormatError, match=msg):
        serialize.load(p)


def test_foreign_npz_and_npy(tmp_path):
    p = tmp_path / "r.npz"
    np.savez(p, a=np.arange(3), b=np.ones((2, 2)))
    with pytest.raises(DataFormatError, match="not a fastnn checkpoint"):
        serialize.load(p)
    p = tmp_path / "c.npz"
    np.savez_compressed(p, format=np.arange(3))
    with pytest.raises(DataFormatError, match="compressed"):
        serialize.load(p)
    p = tmp_path / "a.npy"
    np.save(p, np.arange(5))
    with pytest.raises(DataFormatError, match="not an .npz/zip"):
        serialize.load(p)


def test_pickled_object_array_refused(ckpt, tmp_path):
    path, _ = ckpt
    # Add a member holding a pickled object array: must be refused before unpickling.
    with zipfile.ZipFile(path, "a") as zf:
        with zf.open("evil.npy", "w") as fh:
            np.lib.format.write_array(fh, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataFormatError, match="no pickled objects"):
        serialize.load(path)


def test_unexpected_member(ckpt):
    path, _ = ckpt
    rewrite(path, lambda a: a.__setitem__("param.999", np.zeros(2)))
    with pytest.raises(DataFormatError, match=r"unexpected members \['param.999'\]"):
        serialize.load(path)


def test_missing_member(ckpt):
    path, _ = ckpt
    rewrite(path, lambda a: a.pop("param.001"))
    with pytest.raises(DataFormatError, match="'param.001' is missing"):
        serialize.load(path)


def test_tampered_weights_detected_by_hash(ckpt):
    path, _ = ckpt

    def edit(a):
        a["param.000"] = a["param.000"].copy()
        a["param.000"][0, 0] += 1.0

    rewrite(path, edit, rehash=False)          # valid zip, valid .npy, stale hash
    with pytest.raises(DataFormatError, match="SHA-256 mismatch"):
        serialize.load(path)


def test_tampered_bytes_in_place(ckpt):
    path, _ = ckpt
    data = bytearray(open(path, "rb").read())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("param.000.npy")
    # Local header is 30 bytes + name + extra; flip a byte inside the array data.
    off = info.header_offset + 30 + len(info.filename) + len(info.extra) + 128 + 3
    data[off] ^= 0x40
    open(path, "wb").write(bytes(data))
    with pytest.raises(DataFormatError):
        serialize.load(path)


def test_wrong_version_and_marker(ckpt):
    path, _ = ckpt
    rewrite(path, lambda a: a.__setitem__("version", np.array(3, np.int64)))
    with pytest.raises(DataFormatError, match="version 3 is not supported"):
        serialize.load(path)
    rewrite(path, lambda a: a.__setitem__("format", np.frombuffer(b"other-format", np.uint8)))
    with pytest.raises(DataFormatError, match="marker"):
        serialize.load(path)


def test_invalid_json_meta(ckpt):
    path, _ = ckpt
    rewrite(path, lambda a: a.__setitem__("meta", np.frombuffer(b"{not json", np.uint8)))
    with pytest.raises(DataFormatError, match="not valid JSON"):
        serialize.load(path)


def test_meta_shape_disagrees_with_member(ckpt):
    path, _ = ckpt

    def edit(a):
        meta = get_meta(a)
        meta["params"][0]["shape"] = [5, 6]
        set_meta(a, meta)

    rewrite(path, edit)
    with pytest.raises(DataFormatError, match="metadata says"):
        serialize.load(path)


def test_architecture_disagrees_with_weights(ckpt):
    path, _ = ckpt

    def edit(a):
        meta = get_meta(a)
        meta["model"]["layers"][0]["out_features"] = 4       # Dense(6, 4) vs saved (6, 5)
        set_meta(a, meta)

    rewrite(path, edit)
    with pytest.raises(DataFormatError):
        serialize.load(path)


@pytest.mark.parametrize("cls", ["os.system", "Parameter", 3, None])
def test_unknown_model_class(ckpt, cls):
    path, _ = ckpt

    def edit(a):
        meta = get_meta(a)
        meta["model"]["class"] = cls
        set_meta(a, meta)

    rewrite(path, edit)
    with pytest.raises(DataFormatError):
        serialize.load(path)


# ----------------------------------------------------------------------------- real optimizers

@pytest.mark.parametrize("opt_name, kwargs", [("Adam", {"lr": 0.01}),
                                              ("SGD", {"lr": 0.1, "momentum": 0.9})])
def test_resume_with_real_optimizer_is_bitwise(tmp_path, opt_name, kwargs):
    model = make_model(np.float64, seed=3)
    opt = getattr(optim, opt_name)(model, **kwargs)
    rng = np.random.default_rng(0)
    for _ in range(3):
        model.flat_grads[:] = rng.standard_normal(model.flat_grads.size)
        opt.step()
    path = tmp_path / "resume.npz"
    serialize.save(model, path, optimizer=opt, extra={"epoch": 3})
    ck = serialize.load(path, with_optimizer=True)
    assert ck.optimizer_state["class"] == opt_name and ck.optimizer_state["step"] == 3
    # Same kind of optimizer, another lr: the saved hyper-parameters come back too.
    opt2 = getattr(optim, opt_name)(ck.model, **{**kwargs, "lr": 123.0})
    opt2.load_state_dict(ck.optimizer_state)
    assert opt2.lr == kwargs["lr"]
    for _ in range(2):
        g = rng.standard_normal(model.flat_grads.size)
        model.flat_grads[:] = g
        ck.model.flat_grads[:] = g
        opt.step()
        opt2.step()
    np.testing.assert_array_equal(ck.model.flat_params, model.flat_params)


# ----------------------------------------------------------------- format versions, buffers

FIXTURE_V1 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures",
                          "checkpoint_v1.npz")


def test_loads_a_checkpoint_written_by_the_previous_release():
    # tests/fixtures/checkpoint_v1.npz: MLP([6, 5, 3], seed=0), one Adam step, written by
    # fastnn at ac05f4f (format version 1, before model buffers existed)
    model, opt_state, extra = serialize.load(FIXTURE_V1, with_optimizer=True)
    assert extra["epoch"] == 1 and opt_state["class"] == "Adam" and opt_state["step"] == 1
    assert model.count_params() == 53 and model.named_buffers() == []
    np.testing.assert_allclose(model.flat_params[:3], [0.10182875, -0.17796838, -0.37479356],
                               rtol=1e-6)


def test_model_without_buffers_is_still_written_as_version_1(tmp_path):
    path = serialize.save(make_model(), tmp_path / "m.npz")
    a = members(path)
    assert int(a["version"]) == 1
    assert "buffers" not in get_meta(a)


def _bn_model():
    from fastnn.layers import BatchNorm2D, Conv2D, Flatten
    model = fastnn.Sequential([Conv2D(1, 2, 3), BatchNorm2D(2), Flatten(), layers.Dense(8, 3)], seed=0)
    model(np.random.default_rng(0).standard_normal((4, 4, 4, 1)).astype(np.float32))
    return model


def test_buffers_round_trip_as_version_2(tmp_path):
    model = _bn_model()
    path = serialize.save(model, tmp_path / "bn.npz")
    a = members(path)
    assert int(a["version"]) == 2
    assert [e["name"] for e in get_meta(a)["buffers"]] == ["1.running_mean", "1.running_var"]
    loaded = serialize.load(path)
    for (n1, b1), (n2, b2) in zip(model.named_buffers(), loaded.named_buffers()):
        assert n1 == n2
        np.testing.assert_array_equal(b1, b2)


def test_damaged_buffers_are_refused(tmp_path):
    path = serialize.save(_bn_model(), tmp_path / "bn.npz")
    rewrite(path, lambda a: a.pop("buffer.001"))
    with pytest.raises(DataFormatError, match="model buffer '1.running_var'.*missing"):
        serialize.load(path)
    path = serialize.save(_bn_model(), tmp_path / "bn2.npz")

    def downgrade(a):
        a["version"] = np.array(1, np.int64)
    rewrite(path, downgrade)
    with pytest.raises(DataFormatError, match="version 1 checkpoint cannot hold model buffers"):
        serialize.load(path)
