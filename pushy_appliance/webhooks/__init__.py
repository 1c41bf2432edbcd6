"""Job notifications by signed webhook.

Pure (layer 1 of ``pushy_appliance``): ``webhooks.model`` (webhooks and their durable
delivery queue, fed by the jobs' own records), ``webhooks.rules`` (request bodies, URLs,
the address policy, the payload, its signature and the retry schedule). Engine (layer 3):
``webhooks.engine`` (the bounded pool that sends deliveries and stores each attempt). This
package module imports nothing.
"""
