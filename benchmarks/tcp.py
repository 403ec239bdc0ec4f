async def run(ctx):
    raise NotImplementedError
