"""delen_ros: multi-tenant, bound-aware multi-exit DNN serving for ROS 2 camera streams.

``delen_ros.core`` is ROS-free (torch, numpy, stdlib); ``delen_ros.ros`` is the thin ROS 2 layer.
"""
# The generated msg/srv live in the installed copy of this package; let a source checkout that sits
# first on sys.path still find them (and vice versa).
__path__ = __import__('pkgutil').extend_path(__path__, __name__)
