"""`fastrnn info`: the version, the kernels' ISA and threads, the CPU, the peers installed and the BLAS pools.

Reads fastrnn.runtime only (never fastrnn.bench): machine_info() imports the peers to tell their versions.
"""

NAME = "info"


def add_parser(subparsers):
    return subparsers.add_parser(NAME, help="version, kernel ISA, threads, BLAS and peers")


def _peer_status(info):
    """[(peer's display name, None if usable else why not)], from machine_info()'s versions."""
    ort = None
    if not info.get("onnxruntime"):
        ort = "onnxruntime is not installed"
    elif not info.get("onnx"):
        ort = "onnx is not installed (needed to build the ONNX graph)"
    return [("torch", None if info.get("torch") else "torch is not installed"), ("ORT", ort)]


def run(args):
    from ..runtime import get_num_threads, machine_info
    info = machine_info()
    print(f"fastrnn {info['fastrnn']}  (kernels: {info['fastrnn_isa']}, threads: {get_num_threads()})")
    print(f"cpu: {info['cpu']} ({info['usable_cpus']} usable of {info['cpu_count']})")
    print("python {python}, numpy {numpy}, scipy {scipy}".format(**info))
    for name, why in _peer_status(info):
        print(f"peer {name}: {why or 'available'}")
    for pool in info.get("thread_pools", []):
        print(f"thread pool: {pool.get('internal_api')} {pool.get('version')} ({pool.get('user_api')}), "
              f"{pool.get('num_threads')} threads, {pool.get('prefix')}")
    return 0
