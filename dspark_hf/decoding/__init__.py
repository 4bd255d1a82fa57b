"""The decoding core. Imports run one way, each module only from those above it:

    compat, graphs        Transformers-version shims; the one CUDA-graph capture helper
    policies              how many drafts to verify: pure functions of prefix survival and costs
    round                 one round: draft, cut, budget, accept, record (the only place these rules live)
    static_target         the target on a static cache, its forwards replayed from graphs
    profile               measured costs of the round's pieces (cached on disk)
    candidates            the adapter to Transformers' assisted loop
    static_loop           our own loop on the static target
    routing               validate a request, resolve its policy, the generate() hook

`python -m dspark_hf.import_graph` prints the package's import graph and checks it has no cycle.
"""
