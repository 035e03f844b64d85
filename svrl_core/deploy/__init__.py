"""Running an exported policy beside a robot: policy server, robot-side client and control loop,
robot interfaces (a simulated robot on svrl's envs, AgileX Piper arms on piper_sdk)."""

from svrl_core.deploy.client import PolicyClient, RequestRejected, ServerUnreachable, UnsafeReply
from svrl_core.deploy.control import ChunkRunner, ControlConfig, ControlReport
from svrl_core.deploy.robots import Robot, RobotFault, SimulatedRobot, UnsafeAction
from svrl_core.deploy.server import PolicyServer, ServeConfig, ServerThread

__all__ = ["ChunkRunner", "ControlConfig", "ControlReport", "PolicyClient", "PolicyServer", "RequestRejected", "Robot", "RobotFault",
           "ServeConfig", "ServerThread", "ServerUnreachable", "SimulatedRobot", "UnsafeAction", "UnsafeReply"]
