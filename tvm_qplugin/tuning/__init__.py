"""MetaSchedule as the product's tuner (docs/tuning.md "Tuning").

``tvm-qplugin tune`` / :func:`tvm_qplugin.tuning.tuner.tune` searches schedules for a model's
integer kernels and stores the verified ones in a database per board and ISA level;
``compile --tuning-db`` applies one (:mod:`.apply`). One module per concern, so that a new target
adds a runner or a rule, not a new mechanism:

* :mod:`.tasks`    -- integer kernels -> tuning tasks (workload = the normalised PrimFunc; prepacked
  kernels as the packed one)
* :mod:`.space`    -- design space: our tunable schedule rules, else MetaSchedule's default space
* :mod:`.compare`  -- the end-of-task verdict: default schedule vs best record, timed interleaved
* :mod:`.verify`   -- a candidate vs the op's NumPy twin, bit for bit
* :mod:`.measure`  -- the measure callback that verifies before it stores
* :mod:`.database` -- the JSON database on disk (append-only, forgiving reads, trial accounting)
* :mod:`.runners`, :mod:`.tracker` -- in-process builder, local / RPC runners, tracker check
* :mod:`.isa`      -- ISA key of a target, narrowing a target, shipped-database lookup
* :mod:`.tuner`    -- the tune loop; :mod:`.apply` -- the compile side

Submodules are imported on use: ``import tvm_qplugin.tuning`` loads no TVM.
"""
