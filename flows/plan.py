"""The plan flow: a dry run of super-resolve that writes nothing; its table is the flow's
artifact and the command's output."""

from prefect import flow
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel, Field

from flows.params import VolumeURL
from flows.states import fail_on_user_error
from pipeline.estimate import estimate_run
from pipeline.geometry import Box
from pipeline.superresolve import DEFAULT_TILE, SuperResolveRequest

Triple = tuple[int, int, int]


class PlanParams(BaseModel):
    """What a super-resolve run of INPUT into OUTPUT with these options would do and cost."""

    input_url: VolumeURL = Field(description="LR volume (only its metadata is read)")
    output_url: VolumeURL = Field(description="SR volume the run would write (not touched)")
    checkpoint: str | None = Field(None, description="checkpoint (scale; measures LR px/s)")
    scale: int | None = Field(None, ge=2, description="SR scale when no checkpoint is given")
    block: Triple | None = None
    chunk: Triple | None = None
    shard: Triple | None = None
    roi: str | None = Field(None, description="output region z0:z1,y0:y1,x0:x1")
    tile: int = DEFAULT_TILE
    halo: int | None = Field(None, description="LR px per tile side (default: the run's)")
    batch_size: int = Field(4, ge=1)
    device: str = "auto"
    lr_px_per_s: float | None = Field(None, gt=0, description="LR pixels/s per GPU")
    measure: bool = Field(False, description="measure LR px/s with the checkpoint here")

    def to_request(self) -> SuperResolveRequest:
        return SuperResolveRequest(
            input_url=self.input_url, output_url=self.output_url, checkpoint=self.checkpoint or "",
            block=self.block, chunk=self.chunk, shard=self.shard,
            roi=Box.parse(self.roi) if self.roi else None, tile=self.tile, halo=self.halo,
            scale=self.scale, device=self.device, batch_size=self.batch_size,
        )  # fmt: skip


@flow(name="plan", log_prints=True)
@fail_on_user_error
def plan_flow(params: PlanParams) -> list[tuple[str, str]]:
    """Estimate a super-resolve run; returns the table's (quantity, value) rows."""
    estimate = estimate_run(params.to_request(), params.lr_px_per_s, params.measure)
    rows = estimate.rows()
    create_table_artifact(
        [{"quantity": name, "value": value} for name, value in rows], key="super-resolve-plan",
        description="What the run would write and cost (nothing was written)",
    )  # fmt: skip
    return rows
