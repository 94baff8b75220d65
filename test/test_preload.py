"""The node process starts importing torch and the engine at once, off the main thread, so that
configure does not pay for the import (2-6 s on an H200 host)."""
import subprocess
import sys


def test_preload_imports_the_engine_off_the_main_thread():
    code = ('import sys; from delen_ros.ros.run import preload_inference_libraries as p; '
            't = p(); assert t.daemon and t.name == "delen-preload"; t.join(120); '
            'assert "torch" in sys.modules and "delen_ros.core.engine" in sys.modules; print("ok")')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == 'ok'


def test_cuda_libraries_are_preloaded_only_where_the_device_may_be_cuda():
    code = ('import torch; from delen_ros.ros.run import preload_cuda_libraries as p; '
            'from delen_ros.core.runner import warm_cuda_libraries as w; '
            'assert p("cpu") is None; t = p("auto"); assert t is not None and t.daemon; t.join(120); '
            'assert w("cpu") is False; assert w("cuda") is torch.cuda.is_available(); print("ok")')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == 'ok'
