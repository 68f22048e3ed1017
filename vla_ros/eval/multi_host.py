"""Two 'hosts' on one machine for the fault suite: network namespaces joined by a veth pair.

`--two-hosts` puts perception + planner (the GPU host) in one namespace and action, sim arm,
recorder, relay and the suite's probe (the robot host) in another; DDS discovers across the
veth link with its default multicast discovery. Fast DDS's shared-memory transport would bypass
the link between processes of one machine, so it is switched off (FASTDDS_BUILTIN_TRANSPORTS=
UDPv4): every byte between the hosts crosses the veth. `--degrade RATE` shapes both ends with a
`tbf` qdisc (token bucket: rate limit + queueing latency); netem does not exist in this kernel.
Needs root (ip netns, ip link, tc).
"""
from __future__ import annotations

import ctypes
import os
import subprocess
from typing import Dict, List

GPU_NODES = ('perception', 'planner')
_CLONE_NEWNET = 0x40000000
_SUBNET = '10.213.{}.{}'


def _ip(*args: str) -> None:
    subprocess.run(['ip', *args], check=True)


class HostLayout:
    """One host (default) or two network namespaces joined by a veth pair."""

    def __init__(self, two_hosts: bool = False, degrade: str = '', tbf_latency: str = '100ms'):
        self.two_hosts = two_hosts
        self.degrade = degrade
        self.tbf_latency = tbf_latency
        tag = os.getpid() % 100000
        self.gpu, self.robot = f'vla_gpu_{tag}', f'vla_robot_{tag}'
        self._up = False
        self.link_stats: Dict[str, int] = {}
        if two_hosts:
            self._setup(tag % 250)

    @staticmethod
    def add_arguments(parser) -> None:
        parser.add_argument('--two-hosts', action='store_true',
                            help='perception+planner and action+sim in two network namespaces joined by a veth')
        parser.add_argument('--degrade', default='', metavar='RATE',
                            help='with --two-hosts: shape the link with tbf to RATE (e.g. 8mbit)')

    @classmethod
    def from_args(cls, args) -> 'HostLayout':
        return cls(getattr(args, 'two_hosts', False), getattr(args, 'degrade', ''))

    def _setup(self, octet: int) -> None:
        _ip('netns', 'add', self.gpu)
        _ip('netns', 'add', self.robot)
        self._up = True
        veth_g, veth_r = f'vg{octet}', f'vr{octet}'
        self._veth_g = veth_g
        _ip('link', 'add', veth_g, 'type', 'veth', 'peer', 'name', veth_r)
        for ns, dev, host in ((self.gpu, veth_g, 1), (self.robot, veth_r, 2)):
            _ip('link', 'set', dev, 'netns', ns)
            _ip('-n', ns, 'addr', 'add', _SUBNET.format(octet, host) + '/24', 'dev', dev)
            _ip('-n', ns, 'link', 'set', 'lo', 'up')
            _ip('-n', ns, 'link', 'set', dev, 'up', 'multicast', 'on')
            _ip('-n', ns, 'route', 'add', '224.0.0.0/4', 'dev', dev)
            if self.degrade:
                subprocess.run(['tc', '-n', ns, 'qdisc', 'add', 'dev', dev, 'root', 'tbf', 'rate', self.degrade,
                                'burst', '32kbit', 'latency', self.tbf_latency], check=True)
        # This process (the probe) and every robot-side node live in the robot namespace.
        fd = os.open(f'/var/run/netns/{self.robot}', os.O_RDONLY)
        try:
            if ctypes.CDLL('libc.so.6', use_errno=True).setns(fd, _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), 'setns into the robot namespace failed')
        finally:
            os.close(fd)

    def prefix(self, node: str) -> List[str]:
        if self.two_hosts and node in GPU_NODES:
            return ['ip', 'netns', 'exec', self.gpu]
        return []

    def environment(self, env: Dict[str, str]) -> Dict[str, str]:
        if self.two_hosts:
            env = dict(env, FASTDDS_BUILTIN_TRANSPORTS='UDPv4')
        return env

    def describe(self) -> str:
        if not self.two_hosts:
            return 'one host'
        link = f'tbf {self.degrade}, latency {self.tbf_latency}' if self.degrade else 'unshaped'
        return f'two hosts ({"+".join(GPU_NODES)} | the rest), veth {link}, Fast DDS UDPv4 only'

    def read_link_stats(self) -> Dict[str, int]:
        """Bytes/packets that crossed the link (GPU side), proof that the hosts really talked over it."""
        if not self._up:
            return {}
        base = f'/sys/class/net/{self._veth_g}/statistics/'
        out = {}
        for key in ('rx_bytes', 'tx_bytes', 'rx_packets', 'tx_packets', 'tx_dropped'):
            res = subprocess.run(['ip', 'netns', 'exec', self.gpu, 'cat', base + key], capture_output=True, text=True)
            if res.returncode == 0:
                out[key] = int(res.stdout.strip())
        if self.degrade:
            res = subprocess.run(['tc', '-n', self.gpu, '-s', 'qdisc', 'show', 'dev', self._veth_g],
                                 capture_output=True, text=True)
            out['tc'] = ' '.join(res.stdout.split())
        self.link_stats = out
        return out

    def teardown(self) -> None:
        if self._up:
            self.read_link_stats()
            for ns in (self.gpu, self.robot):
                subprocess.run(['ip', 'netns', 'del', ns], check=False)
            self._up = False
