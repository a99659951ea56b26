from setuptools import setup

setup(
    name="snapshot",
    version="0.1.0",
    description="Power-cut-safe snapshots of OpenWrt overlay state on raw MTD flash",
    license="GPL-2.0-or-later",
    python_requires=">=3.11",
    packages=["snapshot", "snapshot.store", "snapshot.tree", "snapshot.packages",
              "snapshot.fleet", "snapshot.health", "snapshot.cli", "mtd"],
    package_data={"mtd": ["mtd_abi.h", "ubi_abi.h", "mount_abi.h"]},
    setup_requires=["cffi>=1.15"],
    cffi_modules=["mtd/build_abi.py:ffibuilder", "mtd/build_abi.py:ubi_ffibuilder",
                  "mtd/build_abi.py:mount_ffibuilder"],
    install_requires=["click>=8.0", "cffi>=1.15"],
    # pytest 9 ids nodes in a way pytest-xdist 3.8 cannot group (--dist loadgroup).
    # ansible-core: the fleet test runs the project's playbook (tests/test_fleet_ansible.py).
    # selenium: the browser tier drives Debian's chromium through its chromedriver.
    extras_require={"test": ["pytest>=7,<9", "pytest-xdist>=3.5", "hypothesis>=6",
                             "ansible-core>=2.15,<2.18", "selenium>=4.10"]},
    entry_points={"console_scripts": ["snapshot = snapshot.cli.door:run"]},
)
