"""Update messages over 2 GiB travel intact (SPEC §3: MPI-4 large counts via mpi4py)."""

import numpy as np
import pytest
from mpi4py import MPI

from fedast_mpi import protocol as P

pytestmark = [pytest.mark.mpi(min_size=2), pytest.mark.slow]


def test_update_message_over_2_gib():
    comm = MPI.COMM_WORLD.Dup()
    n_params = (2**31 // 4) + 1024  # payload alone is past 2 GiB
    try:
        if comm.rank == 0:
            buf = P.update_message(n_params)
            comm.Irecv([buf, MPI.BYTE], 1, P.TAG_UPDATE).Wait()
            hdr, payload = P.update_header(buf)[0], P.update_payload(buf)
            assert buf.nbytes > 2**31
            assert int(hdr["request"]) == 123456789012
            assert payload[0] == 1.5 and payload[n_params // 2] == -2.0 and payload[-1] == 3.25
        elif comm.rank == 1:
            buf = np.zeros(P.HEADER_BYTES + 4 * n_params, np.uint8)
            P.update_header(buf)["request"] = 123456789012
            payload = P.update_payload(buf)
            payload[0], payload[n_params // 2], payload[-1] = 1.5, -2.0, 3.25
            comm.Isend([buf, MPI.BYTE], 0, P.TAG_UPDATE).Wait()
        comm.Barrier()
    finally:
        comm.Free()
