"""ament_python package setup for tscm_ros."""

from glob import glob

from setuptools import find_packages, setup

package_name = "tscm_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*", "benchmarks"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/config", glob("config/*.yaml") + glob("config/*.xml")),
        (
            "share/" + package_name + "/models",
            glob("models/*.json") + glob("models/*.safetensors") + glob("models/*.md"),
        ),
    ],
    python_requires=">=3.10",
    # Python deps are pinned in requirements.txt; ROS deps come from package.xml (rosdep) or
    # requirements-ros.txt. Keeping install_requires minimal lets colcon build against system packages.
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="tscm_ros maintainers",
    maintainer_email="tscm-ros@example.com",
    description="TSCM visual place recognition for ROS 2: student/teacher networks, faiss place maps, "
    "loop-closure candidates, training and evaluation.",
    license="Apache-2.0",
    # colcon test runs pytest when it is a test dependency (setuptools >= 72 drops tests_require)
    extras_require={"test": ["pytest"]},
    entry_points={
        "console_scripts": [
            # ROS 2 nodes and tools (need rclpy)
            "place_recognition_node = tscm_ros.ros.place_recognition_node:main",
            "bag_player = tscm_ros.cli.bag_player:main",
            # ROS-free tools
            "tscm_demo = tscm_ros.cli.demo:main",
            "tscm_build_map = tscm_ros.cli.build_map:main",
            "tscm_evaluate = tscm_ros.cli.evaluate:main",
            "tscm_train = tscm_ros.cli.train:main",
            "tscm_export_dataset = tscm_ros.cli.export_dataset:main",
            "tscm_convert_published = tscm_ros.cli.convert_published:main",
            "tscm_export = tscm_ros.cli.export:main",
            "tscm_describe = tscm_ros.cli.describe:main",
            # fleet maps (PostgreSQL + pgvector)
            "tscm_map_db = tscm_ros.cli.map_db:main",
            "tscm_map_sync = tscm_ros.cli.map_sync:main",
            "tscm_merge_maps = tscm_ros.cli.merge_maps:main",
        ],
    },
)
