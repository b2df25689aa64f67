"""The orchestration layer: one module per job, behind both doors (the CLI and the notebook API).

A job reads its inputs, runs the kernels (``eval``, ``indexes``), and writes the run folder
through ``retrieval.run_schema`` / ``retrieval.runs``; the doors only translate options and
print or return objects.

    inputs     which rows of which files a job takes (the split rules)
    evaluate   retrieve evaluate, retrieval.evaluate, Gallery.evaluate, EvaluationResult.save
    verify     retrieve verify (pairs files, query × gallery trials)
    search     retrieve search (results labelled by a protocol)
    index      retrieve build-index, tune, index-info
    train      retrieve train, embed (locks and checks around retrieval.train)
"""
