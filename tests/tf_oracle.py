"""Real TensorFlow as the oracle for ckptcore's TensorFlow format (run in .venv-tf, never imported by the suite).

``python tests/tf_oracle.py JOB.json OUT_DIR`` does, in one process (TensorFlow takes seconds to import):

* ``restore``: for each case, builds TensorFlow objects shaped as its ``spec`` (a JSON object is a
  ``tf.Module``'s attributes, a list a Python list, ``{"__map__": {...}}`` a dict, ``{"__var__": dtype,
  "shape": [...]}`` a zero ``tf.Variable``), restores the ckptcore-written checkpoint with
  ``tf.train.Checkpoint(...).restore(path).assert_consumed()`` (or ``read``), and saves every
  variable's bytes to ``OUT_DIR/<case>.npz`` (keys are the variables' paths);
* ``write``: writes TensorFlow checkpoints for ckptcore to read (sharded, Keras 3 optimizer,
  SavedModel, float8), each with an ``.npz`` of what it holds.

Results and failures go to ``OUT_DIR/results.json``.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def build(spec, path, out):
    if isinstance(spec, dict) and "__var__" in spec:
        v = tf.Variable(tf.zeros(spec["shape"], getattr(tf, spec["__var__"])))
        out["/".join(path)] = v
        return v
    if isinstance(spec, dict) and "__map__" in spec:
        return {k: build(s, path + [k], out) for k, s in spec["__map__"].items()}
    if isinstance(spec, list):
        return [build(s, path + [str(i)], out) for i, s in enumerate(spec)]
    m = tf.Module()
    for k, s in spec.items():
        setattr(m, k, build(s, path + [k], out))
    return m


def raw(v) -> np.ndarray:
    return np.frombuffer(v.numpy().tobytes(), np.uint8)


def restore_v1_adam(case, out_dir):
    """A model variable ``w`` and a tf.compat.v1 Adam whose slots (m, v) and beta powers come from the checkpoint."""
    m = tf.Module()
    m.w = tf.Variable(tf.zeros(case["shape"]))
    opt = tf.compat.v1.train.AdamOptimizer(0.1)
    status = tf.train.Checkpoint(model=m, optimizer=opt).read(case["path"])
    opt._create_slots([m.w])  # creating the slots restores them (TensorFlow's deferred slot restore)
    opt._create_non_slot_variable(initial_value=0.9, name="beta1_power", colocate_with=m.w)
    opt._create_non_slot_variable(initial_value=0.999, name="beta2_power", colocate_with=m.w)
    status.assert_consumed()
    np.savez(os.path.join(out_dir, case["name"] + ".npz"), w=raw(m.w), m=raw(opt.get_slot(m.w, "m")),
             v=raw(opt.get_slot(m.w, "v")))
    return {"keys": sorted(k for k, _ in tf.train.list_variables(case["path"]))}


def restore(case, out_dir):
    if case.get("v1_adam"):
        return restore_v1_adam(case, out_dir)
    variables: dict = {}
    top = {k: build(s, [k], variables) for k, s in case["spec"].items()}
    ckpt = tf.train.Checkpoint(**top)
    status = ckpt.read(case["path"]) if case.get("read") else ckpt.restore(case["path"])
    status.assert_consumed()
    arrays = {k: raw(v) for k, v in variables.items()}
    if not case.get("read"):
        arrays["save_counter"] = raw(ckpt.save_counter)
    np.savez(os.path.join(out_dir, case["name"] + ".npz"), **arrays)
    return {"keys": sorted(k for k, _ in tf.train.list_variables(case["path"]))}


def write_cases(out_dir, errors):
    done = {}
    for name, fn in [("sharded", write_sharded), ("float8", write_float8), ("keras3", write_keras3),
                     ("saved_model", write_saved_model), ("sliced", write_sliced)]:
        try:
            done[name] = fn(out_dir)
        except Exception:
            errors[name] = traceback.format_exc()
    return done


def write_sliced(out_dir):
    # variables TF saves in slices: a large one its size policy cuts across shards (and a string tensor beside
    # it), and a TF1 partitioned variable; the values and TF's own list_variables/get_tensor, for ckptcore to match
    rng = np.random.default_rng(0)
    vs = {"big": tf.Variable(rng.normal(size=(37, 6)).astype(np.float32)),
          "words": tf.Variable([b"x" * 3, b"", b"\x00yz"]), "n": tf.Variable(np.arange(5, dtype=np.int16))}
    opts = tf.train.CheckpointOptions(
        experimental_sharding_callback=tf.train.experimental.MaxShardSizePolicy(max_shard_size=200))
    p2 = tf.train.Checkpoint(**vs).write(os.path.join(out_dir, "sliced", "tf2", "ckpt"), options=opts)
    g = tf.Graph()
    with g.as_default():
        v = tf.compat.v1.get_variable("part/emb", initializer=tf.constant(rng.normal(size=(11, 3))),
                                      partitioner=tf.compat.v1.fixed_size_partitioner(4))
        saver = tf.compat.v1.train.Saver(list(v))
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            p1 = saver.save(sess, os.path.join(out_dir, "sliced", "tf1", "model.ckpt"), write_meta_graph=False)
    out = {}
    for p in (p2, p1):
        r = tf.train.load_checkpoint(p)
        keys = {k: list(sh) for k, sh in tf.train.list_variables(p)}
        vals = {}
        for k in keys:
            t = r.get_tensor(k)
            vals[k] = t.hex() if isinstance(t, bytes) else \
                [x.hex() for x in t.ravel()] if t.dtype == object else t.tobytes().hex()
        out[p] = {"keys": keys, "values": vals, "dtypes": {k: str(d.name) for k, d in
                                                           r.get_variable_to_dtype_map().items()}}
    return {"tf2": p2, "tf1": p1, "read": out,
            "shards": sorted(f for f in os.listdir(os.path.dirname(p2)) if ".data-" in f)}


def write_sharded(out_dir):
    # several shards: TF's size policy (256 bytes: four 64-byte variables each, none split into slices)
    vs = {f"v{i}": tf.Variable(tf.fill([16], float(i))) for i in range(8)}
    opts = tf.train.CheckpointOptions(
        experimental_sharding_callback=tf.train.experimental.MaxShardSizePolicy(max_shard_size=256))
    p = tf.train.Checkpoint(**vs).write(os.path.join(out_dir, "sharded", "ckpt"), options=opts)
    np.savez(os.path.join(out_dir, "sharded.npz"), **{k: v.numpy() for k, v in vs.items()})
    return {"path": p, "files": sorted(os.listdir(os.path.dirname(p)))}


def write_float8(out_dir):
    exp = tf.dtypes.experimental
    f8 = {"e4m3": tf.Variable(tf.cast(tf.constant([0.5, 1.0, -2.0]), exp.float8_e4m3fn)),
          "e5m2": tf.Variable(tf.cast(tf.constant([0.25, 4.0, -8.0]), exp.float8_e5m2))}
    p = tf.train.Checkpoint(**f8).write(os.path.join(out_dir, "float8", "ckpt"))
    np.savez(os.path.join(out_dir, "float8.npz"), **{k: raw(v) for k, v in f8.items()})
    return {"path": p}


def write_keras3(out_dir):
    # Keras 3: a model and its Adam optimizer after one step (its moments are optimizer variables)
    import keras

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    opt = keras.optimizers.Adam(0.1)
    x, y = np.ones((4, 3), np.float32), np.zeros((4, 2), np.float32)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean((model(x) - y) ** 2)
    opt.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
    p = tf.train.Checkpoint(model=model, optimizer=opt).write(os.path.join(out_dir, "keras3", "ckpt"))
    np.savez(os.path.join(out_dir, "keras3.npz"), **{k: tf.train.load_variable(p, k)
                                                      for k, _ in tf.train.list_variables(p)
                                                      if k != "_CHECKPOINTABLE_OBJECT_GRAPH"})
    return {"path": p}


def write_saved_model(out_dir):
    # a SavedModel's variables bundle
    m = tf.Module()
    m.w = tf.Variable([1.0, 2.0, 3.0])
    m.f = tf.function(lambda x: x * m.w, input_signature=[tf.TensorSpec([3], tf.float32)])
    tf.saved_model.save(m, os.path.join(out_dir, "saved_model"))
    return {"path": os.path.join(out_dir, "saved_model", "variables", "variables")}


def main(job_file, out_dir):
    with open(job_file) as f:
        job = json.load(f)
    results: dict = {"restore": {}, "write": {}, "errors": {}}
    for case in job.get("restore", []):
        try:
            results["restore"][case["name"]] = restore(case, out_dir)
        except Exception:
            results["errors"][case["name"]] = traceback.format_exc()
    if job.get("write"):
        results["write"] = write_cases(out_dir, results["errors"])
    results["writer"] = writer_cases(job, out_dir, results["errors"])
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)


# -- TensorFlow reading what ckptcore's writer side produced (convert, manager, adapter state) ---------------

def writer_case(case, out_dir):
    """One case of the job's ``writer`` list (tests/tf_live_writer.py builds them); returns what TF saw."""
    kind = case["kind"]
    if kind == "flat":  # TF1-style name keys: tf.train.load_checkpoint reads every one
        reader = tf.train.load_checkpoint(case["path"])
        keys = sorted(k for k, _ in tf.train.list_variables(case["path"]))
        np.savez(os.path.join(out_dir, case["name"] + ".npz"),
                 **{k.replace("/", "|"): np.frombuffer(reader.get_tensor(k).tobytes(), np.uint8) for k in keys})
        return {"keys": keys}
    if kind == "graph":  # an object graph: restore into TF objects, and say what assert_consumed thinks
        variables: dict = {}
        top = {k: build(s, [k], variables) for k, s in case["spec"].items()}
        status = tf.train.Checkpoint(**top).read(case["path"])
        consumed = None
        try:
            status.assert_consumed()
        except AssertionError as e:
            consumed = str(e)
        status.assert_existing_objects_matched()
        np.savez(os.path.join(out_dir, case["name"] + ".npz"), **{k: raw(v) for k, v in variables.items()})
        keys = sorted(k for k, _ in tf.train.list_variables(case["path"]))
        strings = {k: tf.train.load_variable(case["path"], k).decode("utf-8") for k in keys
                   if k.endswith("/.ATTRIBUTES/CKPTCORE_STATE")}
        return {"keys": keys, "assert_consumed": consumed, "strings": strings}
    if kind == "manager":  # a ckptcore CheckpointManager's directory, seen by TF's own functions and manager
        d = case["directory"]
        state = tf.train.get_checkpoint_state(d)
        variables = {}
        top = {k: build(s, [k], variables) for k, s in case["spec"].items()}
        ckpt = tf.train.Checkpoint(**top)
        manager = tf.train.CheckpointManager(ckpt, d, max_to_keep=case["max_to_keep"])
        seen = {"latest": tf.train.latest_checkpoint(d), "all": list(state.all_model_checkpoint_paths),
                "timestamps": list(state.all_model_checkpoint_timestamps),
                "manager_latest": manager.latest_checkpoint, "manager_checkpoints": list(manager.checkpoints)}
        ckpt.restore(manager.latest_checkpoint).assert_consumed()
        np.savez(os.path.join(out_dir, case["name"] + ".npz"), **{k: raw(v) for k, v in variables.items()})
        for v in variables.values():  # then TF's manager saves once more, into the same directory
            v.assign(v + tf.ones_like(v))
        seen["tf_saved"] = manager.save(checkpoint_number=case["tf_number"])
        seen["after_tf_save"] = [os.path.basename(p) for p in
                                 tf.train.get_checkpoint_state(d).all_model_checkpoint_paths]
        return seen
    raise ValueError(f"unknown writer case kind {kind!r}")


def writer_cases(job, out_dir, errors):
    done = {}
    for case in job.get("writer", []):
        try:
            done[case["name"]] = writer_case(case, out_dir)
        except Exception:
            errors[case["name"]] = traceback.format_exc()
    return done


if __name__ == "__main__":
    main(*sys.argv[1:])
