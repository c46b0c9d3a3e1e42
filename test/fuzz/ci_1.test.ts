// CI fuzzing, share 1 of 2 (see ci.ts).
import { ciFuzz } from './ci.ts';

ciFuzz(1_000_000);
