import asyncio, json, time, subprocess, os, signal
from playwright.async_api import async_playwright
TOK=open('/tmp/acc_ws/web.jwt').read().strip()
BOB=open('/tmp/acc_ws/bob.jwt').read().strip()
BASE="http://127.0.0.1:18210"
PROXY=int(open('/tmp/acc_ws/proxy.pid').read())
def publish(d):
    return subprocess.run(["curl","-s","-X","POST","http://127.0.0.1:18200/v1/events/publish","-H","Authorization: Bearer "+BOB,"-H","Content-Type: application/json","-d",json.dumps({"channel":"broadcast:demo","data":d})],capture_output=True,text=True).stdout
async def main():
    async with async_playwright() as p:
        b=await p.chromium.launch(executable_path='/usr/bin/chromium', headless=True)
        page=await b.new_page(viewport={"width":1280,"height":800})
        logs=[]
        page.on("console", lambda m: logs.append(f"console.{m.type}: {m.text}") if m.type!="verbose" else None)
        page.on("pageerror", lambda e: logs.append(f"pageerror: {e}"))
        await page.goto(BASE+"/#key="+TOK)
        await page.wait_for_timeout(800)
        await page.click("#subscribe"); await page.wait_for_timeout(300)
        publish({"n":1}); await page.wait_for_timeout(300)
        os.kill(PROXY, signal.SIGUSR1)
        await page.wait_for_timeout(50)
        print("state during:", await page.text_content("#state"))
        print("publish while reconnecting:", publish({"n":2}))
        await page.wait_for_timeout(2000)
        publish({"n":3}); await page.wait_for_timeout(500)
        evs=await page.eval_on_selector_all("#events .event code","els=>els.map(e=>e.textContent)")
        print("state:", await page.text_content("#state"), "events pane:", evs)
        # subscribe forbidden channel
        await page.fill("#channel","user:alice"); await page.click("#subscribe"); await page.wait_for_timeout(400)
        await page.fill("#channel","bad channel!"); await page.click("#subscribe"); await page.wait_for_timeout(400)
        print("chat log after bad subs:", (await page.text_content("#log")).strip())
        await page.screenshot(path="/tmp/acc_ws/s11_channels_after_drop.png", full_page=True)
        # bad key
        p2=await b.new_page(viewport={"width":1280,"height":800})
        p2.on("console", lambda m: logs.append(f"p2 console.{m.type}: {m.text}") if m.type!="verbose" else None)
        await p2.goto(BASE+"/#key=sk_live_definitelynotakey")
        await p2.wait_for_timeout(1500)
        print("bad key state:", await p2.text_content("#state"), "log:", (await p2.text_content("#log")).strip())
        await p2.screenshot(path="/tmp/acc_ws/s12_badkey.png", full_page=True)
        print("\n".join(logs))
        await b.close()
asyncio.run(main())
