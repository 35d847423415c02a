import { approve, PilothouseClient, PilothouseError, StopReason } from "@pilothouse/client";

const client = new PilothouseClient({
  address: process.env.PILOTHOUSE_ADDRESS ?? "http://127.0.0.1:50051",
});
try {
  const { session } = await client.getOrCreateSession("assistant", "me");

  // The run's events, in order; a cut connection is re-attached by itself.
  for await (const event of client.streamTo(session.id, "What is 17 * 23 + 4?")) {
    switch (event.event.case) {
      case "toolCallsStart":
        console.log("calls:", event.event.value.toolCalls.map((call) => call.name).join(", "));
        break;
      case "approvalRequired": // only for tools that need approval
        await client.submitDecision(session.id, approve(event.event.value.requestId));
        break;
      case "textDelta":
        process.stdout.write(event.event.value.text);
        break;
      case "done":
        console.log(`\n[${StopReason[event.event.value.stopReason]}]`);
    }
  }

  // Steer a run while it goes: Steer is one bidirectional stream.
  const steer = client.steer(session.id, "What time is it?");
  steer.send("In UTC, please");
  console.log((await steer.result()).finalResponse);
} catch (error) {
  if (error instanceof PilothouseError) {
    console.error(error.codeName, error.reason, error.metadata, error.fieldViolations);
  }
  throw error;
} finally {
  client.close();
}
