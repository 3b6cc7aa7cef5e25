/** bridge's version; the appliance image stamps it and the agent reports it. */
export const VERSION = '0.1.0';
