def pytest_configure(config):
    config.addinivalue_line(
        "markers", "kernel: boots a real Linux kernel under QEMU (slow; needs qemu-system-x86_64)")
