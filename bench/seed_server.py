"""The seed's service shape: a unary `Users.SendUserInfo` that enqueues one RQ job per user."""

from __future__ import annotations

from concurrent import futures

import grpc
from rq import Queue

from protobufs import users_pb2, users_pb2_grpc

import seed_jobs

FIELDS = tuple(f.name for f in users_pb2.UserRequest.DESCRIPTOR.fields)


class SeedUsers(users_pb2_grpc.UsersServicer):
    def __init__(self, queue: Queue, namespace: str):
        self.queue = queue
        self.namespace = namespace

    def SendUserInfo(self, request, context):
        user = {name: getattr(request, name) for name in FIELDS}
        self.queue.enqueue(seed_jobs.save_user, self.namespace, user)
        return users_pb2.UserResponse(status=True, message=f"user {request.id} queued")


def serve(queue: Queue, namespace: str) -> tuple[grpc.Server, int]:
    """Start the seed server on a free loopback port; returns the server and its port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=10))
    users_pb2_grpc.add_UsersServicer_to_server(SeedUsers(queue, namespace), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port
